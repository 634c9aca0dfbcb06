import { Duration, Token } from 'aws-cdk-lib';
import type * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { validateProps } from '../validate.js';

/** Props of {@link LoadBalancer}. */
export interface LoadBalancerProps {
  readonly vpc: ec2.IVpc;
  /** Public subnets for the load balancer. */
  readonly subnets: ec2.SubnetSelection;
  /** The load balancer's security group; the listeners open their ports on it. */
  readonly securityGroup: ec2.ISecurityGroup;
  /** Receives the access logs (encrypted, TLS-only). */
  readonly accessLogBucket: s3.IBucket;
  /** GET and HEAD requests under `apiPathPattern` go here (the read pool). */
  readonly readTargets: elbv2.IApplicationTargetGroup;
  /** All other methods under `apiPathPattern` go here (the write pool). */
  readonly writeTargets: elbv2.IApplicationTargetGroup;
  /** Everything else: the frontend. */
  readonly defaultTargets: elbv2.IApplicationTargetGroup;
  /**
   * An ACM certificate ARN. With one, the load balancer serves HTTPS with
   * {@link LoadBalancerProps.sslPolicy} and redirects HTTP to HTTPS; without one it serves
   * plain HTTP only, which is meant for a first deploy or a private test environment.
   * @default - HTTP only
   */
  readonly certificateArn?: string;
  /** TLS policy of the HTTPS listener. @default elbv2.SslPolicy.RECOMMENDED_TLS (TLS 1.3 and 1.2, forward secrecy) */
  readonly sslPolicy?: elbv2.SslPolicy;
  /** Refuse deletion of the load balancer (production). @default false */
  readonly deletionProtection?: boolean;
  /** The API's path pattern. @default '/api/*' */
  readonly apiPathPattern?: string;
}

/** The two listener-rule priorities; reads must be matched before the method-agnostic write rule. */
export const RULE_PRIORITY = { reads: 10, writes: 20 } as const;

/**
 * The internet-facing Application Load Balancer: access logs, invalid headers dropped, HTTPS
 * with a modern policy when a certificate is configured (HTTP then only redirects), and
 * listener rules that send API reads (GET, HEAD) to the read pool, other API methods to the
 * write pool and everything else to the frontend.
 *
 * @example
 * ```ts
 * const lb = new LoadBalancer(stack, 'Alb', {
 *   vpc, subnets: { subnetGroupName: 'public' }, securityGroup: albSg, accessLogBucket: bucket,
 *   readTargets, writeTargets, defaultTargets: frontendTargets,
 *   certificateArn: 'arn:aws:acm:eu-west-1:123456789012:certificate/abc',
 * });
 * ```
 */
export class LoadBalancer extends Construct {
  readonly alb: elbv2.ApplicationLoadBalancer;
  /** The listener carrying the routing rules (HTTPS with a certificate, HTTP otherwise). */
  readonly listener: elbv2.ApplicationListener;
  /** `https` or `http`. */
  readonly scheme: 'https' | 'http';

  constructor(scope: Construct, id: string, props: LoadBalancerProps) {
    super(scope, id);
    const apiPathPattern = props.apiPathPattern ?? '/api/*';
    validateProps('LoadBalancer', [
      [apiPathPattern.startsWith('/'), `apiPathPattern must start with / (got "${apiPathPattern}")`],
      [props.certificateArn === undefined || Token.isUnresolved(props.certificateArn) || /^arn:aws[a-z-]*:acm:/.test(props.certificateArn), `certificateArn must be an ACM certificate ARN (got "${props.certificateArn}")`],
    ]);

    this.alb = new elbv2.ApplicationLoadBalancer(this, 'Alb', {
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      securityGroup: props.securityGroup,
      internetFacing: true,
      dropInvalidHeaderFields: true,
      idleTimeout: Duration.seconds(60),
      http2Enabled: true,
      deletionProtection: props.deletionProtection ?? false,
    });
    this.alb.logAccessLogs(props.accessLogBucket, 'alb');

    const forwardToFrontend = elbv2.ListenerAction.forward([props.defaultTargets]);
    if (props.certificateArn) {
      this.scheme = 'https';
      this.listener = this.alb.addListener('Https', {
        port: 443,
        protocol: elbv2.ApplicationProtocol.HTTPS,
        certificates: [elbv2.ListenerCertificate.fromArn(props.certificateArn)],
        sslPolicy: props.sslPolicy ?? elbv2.SslPolicy.RECOMMENDED_TLS,
        defaultAction: forwardToFrontend,
      });
      this.alb.addRedirect({ sourcePort: 80, sourceProtocol: elbv2.ApplicationProtocol.HTTP, targetPort: 443, targetProtocol: elbv2.ApplicationProtocol.HTTPS });
    } else {
      this.scheme = 'http';
      this.listener = this.alb.addListener('Http', {
        port: 80,
        protocol: elbv2.ApplicationProtocol.HTTP,
        defaultAction: forwardToFrontend,
      });
    }

    this.listener.addAction('ApiReads', {
      priority: RULE_PRIORITY.reads,
      conditions: [elbv2.ListenerCondition.pathPatterns([apiPathPattern]), elbv2.ListenerCondition.httpRequestMethods(['GET', 'HEAD'])],
      action: elbv2.ListenerAction.forward([props.readTargets]),
    });
    this.listener.addAction('ApiWrites', {
      priority: RULE_PRIORITY.writes,
      conditions: [elbv2.ListenerCondition.pathPatterns([apiPathPattern])],
      action: elbv2.ListenerAction.forward([props.writeTargets]),
    });
  }
}
