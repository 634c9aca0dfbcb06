import { RemovalPolicy } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { acknowledge } from '../nag.js';
import { validateProps } from '../validate.js';

/** One route of the scaling API as the guide lists it. */
export interface ApiRoute {
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH';
  /** Relative to the API root, without a leading slash. */
  readonly path: string;
  /** Query-string parameters the method accepts (all optional). */
  readonly query?: readonly string[];
  /** Whether the request must carry a JSON object body. */
  readonly jsonBody?: boolean;
  /** The media type of that body. @default 'application/json' */
  readonly bodyContentType?: string;
}

/** The guide's endpoints (`/api/v1/scaling/...`). */
export const SCALING_API_ROUTES: readonly ApiRoute[] = [
  { method: 'GET', path: 'api/v1/scaling/status' },
  { method: 'GET', path: 'api/v1/scaling/metrics', query: ['service'] },
  { method: 'GET', path: 'api/v1/scaling/history', query: ['service', 'limit', 'cursor', 'since', 'until'] },
  { method: 'GET', path: 'api/v1/scaling/config' },
  { method: 'PUT', path: 'api/v1/scaling/config', jsonBody: true },
  // Partial updates (RFC 7396), so no request resets settings it does not mention.
  { method: 'PATCH', path: 'api/v1/scaling/config', jsonBody: true, bodyContentType: 'application/merge-patch+json' },
  { method: 'POST', path: 'api/v1/scaling/start' },
  { method: 'POST', path: 'api/v1/scaling/stop' },
  { method: 'GET', path: 'api/v1/scaling/recommendations', query: ['service'] },
  { method: 'GET', path: 'api/v1/scaling/shards/statistics' },
  { method: 'GET', path: 'api/v1/scaling/shards/health' },
  { method: 'GET', path: 'api/v1/scaling/shards/rebalance-check' },
];

/** Props of {@link ScalingApi}. */
export interface ScalingApiProps {
  /** Serves every route (API Gateway proxy integration). */
  readonly handler: lambda.IFunction;
  /** The API's name. */
  readonly restApiName: string;
  /** The stage name. @default 'v1' */
  readonly stageName?: string;
  /** The routes. @default SCALING_API_ROUTES */
  readonly routes?: readonly ApiRoute[];
  /** Steady-state requests per second for the stage. @default 20 */
  readonly throttlingRateLimit?: number;
  /** Burst for the stage. @default 40 */
  readonly throttlingBurstLimit?: number;
  /** Retention of the access logs. @default logs.RetentionDays.THREE_MONTHS */
  readonly logRetention?: logs.RetentionDays;
}

/**
 * The scaling REST API in API Gateway: every method requires IAM authorization (SigV4), every
 * request is validated (parameters, and a JSON object body where one is expected) before it
 * reaches the function, the stage is throttled, traced with X-Ray and writes JSON access logs.
 * Unknown paths never reach the function.
 *
 * @example
 * ```ts
 * const api = new ScalingApi(stack, 'Api', { handler: apiFunction, restApiName: 'ca-dms-dev-scaling' });
 * api.api.url; // https://{id}.execute-api.{region}.amazonaws.com/v1/
 * ```
 */
export class ScalingApi extends Construct {
  readonly api: apigw.RestApi;

  constructor(scope: Construct, id: string, props: ScalingApiProps) {
    super(scope, id);
    const routes = props.routes ?? SCALING_API_ROUTES;
    const rate = props.throttlingRateLimit ?? 20;
    const burst = props.throttlingBurstLimit ?? 40;
    const keys = routes.map((r) => `${r.method} ${r.path}`);
    validateProps('ScalingApi', [
      [routes.length > 0, 'routes must not be empty'],
      [new Set(keys).size === keys.length, `routes must be unique (got ${keys.join(', ')})`],
      [routes.every((r) => /^[a-z0-9][a-z0-9\-/{}]*$/.test(r.path) && !r.path.endsWith('/')), 'route paths are relative, lower-case, without a trailing slash'],
      [rate > 0 && burst >= 1, `throttling must be positive (rate ${rate}, burst ${burst})`],
    ]);

    const accessLogs = new logs.LogGroup(this, 'AccessLogs', {
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.api = new apigw.RestApi(this, 'Api', {
      restApiName: props.restApiName,
      description: 'CA-DMS scaling API (IAM-authorized)',
      endpointConfiguration: { types: [apigw.EndpointType.REGIONAL] },
      // API Gateway writes logs through one account-wide role; the stage cannot log without it.
      cloudWatchRole: true,
      cloudWatchRoleRemovalPolicy: RemovalPolicy.RETAIN,
      defaultMethodOptions: { authorizationType: apigw.AuthorizationType.IAM },
      deployOptions: {
        stageName: props.stageName ?? 'v1',
        tracingEnabled: true,
        metricsEnabled: true,
        loggingLevel: apigw.MethodLoggingLevel.ERROR,
        dataTraceEnabled: false,
        throttlingRateLimit: rate,
        throttlingBurstLimit: burst,
        accessLogDestination: new apigw.LogGroupLogDestination(accessLogs),
        accessLogFormat: apigw.AccessLogFormat.jsonWithStandardFields({
          caller: true,
          httpMethod: true,
          ip: true,
          protocol: true,
          requestTime: true,
          resourcePath: true,
          responseLength: true,
          status: true,
          user: true,
        }),
      },
    });

    acknowledge(
      this.api,
      'AwsSolutions-APIG3',
      'Every method requires IAM (SigV4) authorization, so unsigned traffic is rejected by API Gateway before any integration; the stage is throttled. A WAF web ACL adds cost without protecting anything further for an operator-only API.',
    );
    acknowledge(this.api, 'AwsSolutions-COG4', 'The API is for operators and automation with AWS credentials: IAM authorization, not Cognito user pools, is the intended authorizer.');
    acknowledge(
      this.api,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]',
      'The account-wide API Gateway logging role: AWS publishes this managed policy for exactly that role, and API Gateway cannot write execution or access logs without it.',
    );
    const validator = this.api.addRequestValidator('Validator', {
      requestValidatorName: 'parameters-and-body',
      validateRequestParameters: true,
      validateRequestBody: true,
    });
    const jsonObject = this.api.addModel('JsonObject', {
      contentType: 'application/json',
      modelName: 'JsonObject',
      schema: { schema: apigw.JsonSchemaVersion.DRAFT4, title: 'JsonObject', type: apigw.JsonSchemaType.OBJECT, minProperties: 1 },
    });
    const integration = new apigw.LambdaIntegration(props.handler, { proxy: true, allowTestInvoke: false });

    for (const route of routes) {
      const resource = this.api.root.resourceForPath(route.path);
      resource.addMethod(route.method, integration, {
        authorizationType: apigw.AuthorizationType.IAM,
        requestValidator: validator,
        requestParameters: Object.fromEntries((route.query ?? []).map((q) => [`method.request.querystring.${q}`, false])),
        ...(route.jsonBody ? { requestModels: { [route.bodyContentType ?? 'application/json']: jsonObject } } : {}),
      });
    }
  }
}
