/**
 * The production posture, synthesized from `config/prod.json` with a Route 53 hosted zone (the
 * app requests a DNS-validated certificate and points the domain at the load balancer): Multi-AZ
 * databases kept on stack deletion, HTTPS with a modern TLS policy, and a sub-minute check
 * interval rounded up to EventBridge's one minute with a warning.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CfnResource } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import { beforeAll, describe, expect, it } from 'vitest';
import { mergeConfig } from '../../lib/config/deployment-config.js';
import { scheduleMinutes } from '../../lib/control-plane/control-plane.js';
import { deployable, PRODUCTION_DOMAIN as DOMAIN, resourcesOf, ROOT, synthesize, SYNTH_HOOK_TIMEOUT_MS, type Synthesized, unvalidatedSynthesis } from './support/synth.js';

const CERTIFICATE = 'arn:aws:acm:eu-west-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
let prod: unknown;
let s: Synthesized;

beforeAll(() => {
  prod = JSON.parse(readFileSync(join(ROOT, 'config', 'prod.json'), 'utf8')) as unknown;
  s = synthesize(deployable(prod));
}, SYNTH_HOOK_TIMEOUT_MS);

describe('production synthesis', () => {
  it('succeeds with no unacknowledged cdk-nag finding and no CloudFormation validation error', () => {
    expect(s.violations).toEqual([]);
    expect(s.error).toBeUndefined();
  });

  it('creates shards x (1 + replicas) database instances', () => {
    s.template(s.stacks.data).resourceCountIs('AWS::RDS::DBInstance', 4 * (1 + 2));
  });

  it('runs every primary Multi-AZ, protected from deletion, and retains it when it leaves the stack except after the failed create that made it', () => {
    const primaries = resourcesOf(s.template(s.stacks.data), 'AWS::RDS::DBInstance').filter(([, r]) => !r.Properties?.['SourceDBInstanceIdentifier']);
    expect(primaries).toHaveLength(4);
    for (const [, r] of primaries) {
      expect(r.Properties).toMatchObject({ MultiAZ: true, BackupRetentionPeriod: 14, DeletionProtection: true });
      expect(r.DeletionPolicy).toBe('RetainExceptOnCreate');
      expect(r.UpdateReplacePolicy).toBe('Retain');
    }
  });

  it("keeps each primary's subnet group and admin secret exactly as long as the primary", () => {
    const t = s.template(s.stacks.data);
    for (const shard of s.stacks.data.shards) {
      for (const helper of [shard.primary.node.findChild('SubnetGroup').node.defaultChild, shard.primary.node.findChild('Secret').node.defaultChild]) {
        // The secret's logical id is overridden (CDK appends a hash of its password rules).
        const id = s.stacks.data.resolve((helper as CfnResource).logicalId) as string;
        expect(t.toJSON()['Resources'][id], id).toMatchObject({ DeletionPolicy: 'RetainExceptOnCreate', UpdateReplacePolicy: 'Retain' });
      }
    }
  });

  it('keeps every secret that opens a shard (admin and every login) exactly as long as the primary', () => {
    const secrets = resourcesOf(s.template(s.stacks.data), 'AWS::SecretsManager::Secret');
    // Per shard the admin secret and at least the application login's.
    expect(secrets.length).toBeGreaterThanOrEqual(2 * s.stacks.data.shards.length);
    for (const [id, secret] of secrets) expect(secret, id).toMatchObject({ DeletionPolicy: 'RetainExceptOnCreate', UpdateReplacePolicy: 'Retain' });
  });

  it('protects every replica from deletion', () => {
    const replicas = resourcesOf(s.template(s.stacks.data), 'AWS::RDS::DBInstance').filter(([, r]) => r.Properties?.['SourceDBInstanceIdentifier']);
    expect(replicas.length).toBeGreaterThan(0);
    for (const [, r] of replicas) expect(r.Properties?.['DeletionProtection']).toBe(true);
  });

  it('serves HTTPS with a certificate validated in the hosted zone and the recommended TLS policy', () => {
    const t = s.template(s.stacks.services);
    t.hasResourceProperties('AWS::CertificateManager::Certificate', {
      DomainName: DOMAIN.domainName,
      ValidationMethod: 'DNS',
      DomainValidationOptions: [{ DomainName: DOMAIN.domainName, HostedZoneId: DOMAIN.hostedZone.id }],
    });
    const [certificate] = Object.keys(t.findResources('AWS::CertificateManager::Certificate'));
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      Port: 443,
      Protocol: 'HTTPS',
      Certificates: [{ CertificateArn: { Ref: certificate } }],
      SslPolicy: elbv2.SslPolicy.RECOMMENDED_TLS,
    });
  });

  it('serves HTTPS with a certificate given by its ARN instead, requesting none and adding no record', () => {
    // The other form of domain, on a cheap synthesis: the full one (validated) is the hosted zone's,
    // which adds two resources to this one's.
    const given = unvalidatedSynthesis(mergeConfig(prod, { domain: { certificateArn: CERTIFICATE } }));
    const t = given.template(given.stacks.services);
    t.resourceCountIs('AWS::CertificateManager::Certificate', 0);
    t.resourceCountIs('AWS::Route53::RecordSet', 0);
    t.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      Port: 443,
      Protocol: 'HTTPS',
      Certificates: [{ CertificateArn: CERTIFICATE }],
      SslPolicy: elbv2.SslPolicy.RECOMMENDED_TLS,
    });
  });

  it('points the domain at the load balancer with an alias record in the hosted zone', () => {
    s.template(s.stacks.services).hasResourceProperties('AWS::Route53::RecordSet', {
      Name: `${DOMAIN.domainName}.`,
      Type: 'A',
      HostedZoneId: DOMAIN.hostedZone.id,
      AliasTarget: Match.objectLike({ DNSName: Match.anyValue() }),
    });
  });

  it('redirects HTTP to HTTPS', () => {
    s.template(s.stacks.services).hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
      Port: 80,
      Protocol: 'HTTP',
      DefaultActions: [{ Type: 'redirect', RedirectConfig: Match.objectLike({ Protocol: 'HTTPS', Port: '443', StatusCode: 'HTTP_301' }) }],
    });
  });

  it('keeps the method routing rules on the HTTPS listener', () => {
    const t = s.template(s.stacks.services);
    const https = Object.keys(t.findResources('AWS::ElasticLoadBalancingV2::Listener', { Properties: { Port: 443 } }))[0] as string;
    for (const [, rule] of resourcesOf(t, 'AWS::ElasticLoadBalancingV2::ListenerRule')) expect(rule.Properties?.['ListenerArn']).toEqual({ Ref: https });
    t.resourceCountIs('AWS::ElasticLoadBalancingV2::ListenerRule', 2);
  });
});

describe('schedule', () => {
  it('rounds a 30 s SCALING_CHECK_INTERVAL up to EventBridge one-minute rate and says so at synthesis', () => {
    const evaluate = s.stacks.controlPlane.getLogicalId(s.stacks.controlPlane.controlPlane.evaluate.function.node.defaultChild as CfnResource);
    s.template(s.stacks.controlPlane).hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(1 minute)',
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [evaluate, 'Arn'] } })],
    });
    // Read off the construct (Annotations.fromStack would synthesize the whole app again).
    const warnings = s.stacks.controlPlane.controlPlane.node.metadata.filter((m) => m.type === 'aws:cdk:warning').map((m) => String(m.data));
    expect(warnings.some((w) => /SCALING_CHECK_INTERVAL is 30 s.*every 1 min/.test(w))).toBe(true);
  });

  it('rounds intervals up to whole minutes', () => {
    expect([1, 30, 60, 61, 90, 120, 300].map(scheduleMinutes)).toEqual([1, 1, 1, 2, 2, 2, 5]);
  });
});
