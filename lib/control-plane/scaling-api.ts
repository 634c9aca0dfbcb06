import { RemovalPolicy } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { z } from 'zod';
import { scalingApiDocument } from '../../functions/api/routes.js';
import { acknowledge } from '../nag.js';
import { validateProps } from '../validate.js';

/** One route of the scaling API, as API Gateway needs it. */
export interface ApiRoute {
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Relative to the API root, without a leading slash; `{name}` for a path parameter. */
  readonly path: string;
  /** Query-string parameters the method accepts, and whether each is required. */
  readonly query?: Readonly<Record<string, boolean>>;
}

const openApiOperation = z.looseObject({
  parameters: z.array(z.looseObject({ name: z.string(), in: z.string(), required: z.boolean().optional() })).default([]),
});
const openApiPaths = z.looseObject({ paths: z.record(z.string(), z.record(z.string(), z.unknown())) });
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;

/** The routes of an OpenAPI 3 document (the one the API's router serves at `/openapi.json`). */
export function apiRoutesFromOpenApi(document: unknown): ApiRoute[] {
  const doc = openApiPaths.parse(document);
  return Object.entries(doc.paths).flatMap(([path, operations]) =>
    Object.entries(operations).flatMap(([verb, operation]) => {
      const method = METHODS.find((m) => m === verb.toUpperCase());
      if (!method) return [];
      const query = openApiOperation.parse(operation).parameters.filter((p) => p.in === 'query');
      return [{ method, path: path.replace(/^\//, ''), ...(query.length > 0 ? { query: Object.fromEntries(query.map((q) => [q.name, q.required === true])) } : {}) }];
    }),
  );
}

/** Every route the API's router serves, from its OpenAPI document. */
export const SCALING_API_ROUTES: readonly ApiRoute[] = apiRoutesFromOpenApi(scalingApiDocument());

/** What API Gateway itself answers (not the function), with the status it answers with. */
const GATEWAY_RESPONSES: ReadonlyArray<readonly [apigw.ResponseType, number | undefined]> = [
  [apigw.ResponseType.DEFAULT_4XX, undefined],
  [apigw.ResponseType.DEFAULT_5XX, undefined],
  [apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN, 403],
  [apigw.ResponseType.RESOURCE_NOT_FOUND, 404],
  [apigw.ResponseType.ACCESS_DENIED, 403],
  [apigw.ResponseType.INVALID_SIGNATURE, 403],
  [apigw.ResponseType.EXPIRED_TOKEN, 403],
  [apigw.ResponseType.BAD_REQUEST_PARAMETERS, 400],
  [apigw.ResponseType.BAD_REQUEST_BODY, 400],
  [apigw.ResponseType.REQUEST_TOO_LARGE, 413],
  [apigw.ResponseType.UNSUPPORTED_MEDIA_TYPE, 415],
  [apigw.ResponseType.THROTTLED, 429],
  [apigw.ResponseType.QUOTA_EXCEEDED, 429],
  [apigw.ResponseType.INTEGRATION_FAILURE, 504],
  [apigw.ResponseType.INTEGRATION_TIMEOUT, 504],
];

/**
 * The RFC 9457 problem document API Gateway answers with for its own errors. Gateway response
 * templates take only simple substitutions: `$context.error.messageString` is already a quoted
 * JSON string. The default 4XX/5XX responses cover several statuses, so they omit `status`
 * (optional in RFC 9457; the HTTP status is authoritative).
 */
export function gatewayProblemTemplate(status: number | undefined): string {
  return `{"type":"about:blank","title":$context.error.messageString,${status === undefined ? '' : `"status":${status},`}"detail":$context.error.messageString,"instance":"$context.path","requestId":"$context.requestId"}`;
}

/** Every resource path the routes need, the root (`''`) and intermediate ones included. */
export function resourcePaths(routes: readonly ApiRoute[]): string[] {
  const paths = new Set<string>(['']);
  for (const route of routes) {
    const parts = route.path.split('/');
    for (let i = 1; i <= parts.length; i += 1) paths.add(parts.slice(0, i).join('/'));
  }
  return [...paths];
}

function parentPath(path: string): string {
  return path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
}

function lastPart(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

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
 * Unknown paths and other methods reach the function only from IAM-authorized callers, whose
 * router answers them 404 or 405 with `Allow`, as in local mode.
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
    const pathPattern = /^[a-z0-9][a-z0-9\-/{}.]*$/;
    validateProps('ScalingApi', [
      [routes.length > 0, 'routes must not be empty'],
      [new Set(keys).size === keys.length, `routes must be unique (got ${keys.join(', ')})`],
      [routes.every((r) => pathPattern.test(r.path) && !r.path.endsWith('/')), 'route paths are relative, lower-case, without a trailing slash'],
      [rate > 0 && burst >= 1, `throttling must be positive (rate ${rate}, burst ${burst})`],
    ]);

    const accessLogs = new logs.LogGroup(this, 'AccessLogs', {
      retention: props.logRetention ?? logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
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
    acknowledge(this.api, 'AwsSolutions-APIG2', "API Gateway validates the path and query parameters of every method; request bodies are validated by the function with the router's zod schemas (the same ones the OpenAPI document is built from), which answer with problem+json naming each offending field, which API Gateway's model validation cannot.");
    acknowledge(this.api, 'AwsSolutions-COG4', 'The API is for operators and automation with AWS credentials: IAM authorization, not Cognito user pools, is the intended authorizer.');
    acknowledge(
      this.api,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]',
      'The account-wide API Gateway logging role: AWS publishes this managed policy for exactly that role, and API Gateway cannot write execution or access logs without it.',
    );
    // Parameters only: request bodies are validated by the function's own zod schemas, which
    // answer with problem+json naming each field (API Gateway's model validation cannot).
    const validator = this.api.addRequestValidator('Validator', {
      requestValidatorName: 'parameters',
      validateRequestParameters: true,
      validateRequestBody: false,
    });
    const integration = new apigw.LambdaIntegration(props.handler, { proxy: true, allowTestInvoke: false });

    for (const route of routes) {
      const resource = this.api.root.resourceForPath(route.path);
      const pathParams = [...route.path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1] ?? '');
      resource.addMethod(route.method, integration, {
        authorizationType: apigw.AuthorizationType.IAM,
        requestValidator: validator,
        requestParameters: {
          ...Object.fromEntries(pathParams.map((p) => [`method.request.path.${p}`, true])),
          ...Object.fromEntries(Object.entries(route.query ?? {}).map(([q, required]) => [`method.request.querystring.${q}`, required])),
        },
      });
    }

    // A request no method matches gets API Gateway's 403 "Missing Authentication Token", the very
    // answer an unsigned request gets, where local mode answers 404 (unknown path) or 405 with
    // Allow (known path, other method; HEAD where GET is served). A gateway response cannot tell
    // those apart (it has no Allow to give, and remapping MISSING_AUTHENTICATION_TOKEN would
    // answer 404 to unsigned calls of real routes), so the function's router answers them: every
    // resource gets an ANY method (explicit methods take precedence over it) and, unless it has a
    // path-variable child already (API Gateway allows one variable child per resource), a
    // {proxy+} child with ANY for deeper unknown paths. All are IAM-authorized like the routes:
    // an unsigned caller still gets 403 for every path and learns nothing about which exist.
    // One invoke permission serves them all (one per method would outgrow the function's 20 KB
    // resource policy), scoped to the deployed stage: LambdaIntegration's API-scoped permission
    // (`scopePermissionToMethod: false`) names every stage, `test-invoke-stage` included, so the
    // console's and CLI's TestInvokeMethod could run the function outside the deployed stage, its
    // throttling and its access logs (the routes' own permissions already leave it out). The integration is
    // LambdaIntegration's own (AWS_PROXY, POST to the function's invocations path), without
    // the permission it would add.
    const fallback = new apigw.AwsIntegration({
      proxy: true,
      service: 'lambda',
      path: `2015-03-31/functions/${props.handler.functionArn}/invocations`,
    });
    props.handler.addPermission('FallbackInvoke', {
      scope: this,
      principal: new iam.ServicePrincipal('apigateway.amazonaws.com'),
      sourceArn: this.api.arnForExecuteApi('*', '/*', this.api.deploymentStage.stageName),
    });
    const fallbackOptions: apigw.MethodOptions = { authorizationType: apigw.AuthorizationType.IAM };
    const paths = resourcePaths(routes);
    for (const path of paths) {
      const resource = path === '' ? this.api.root : this.api.root.resourceForPath(path);
      resource.addMethod('ANY', fallback, fallbackOptions);
      const variableChild = paths.some((child) => parentPath(child) === path && child !== path && lastPart(child).startsWith('{'));
      if (!variableChild) resource.addProxy({ defaultIntegration: fallback, defaultMethodOptions: fallbackOptions, anyMethod: true });
    }

    for (const [type, status] of GATEWAY_RESPONSES) {
      this.api.addGatewayResponse(`Problem${type.responseType}`, {
        type,
        ...(status === undefined ? {} : { statusCode: String(status) }),
        responseHeaders: { 'Content-Type': "'application/problem+json'", 'Cache-Control': "'no-store'" },
        templates: { 'application/json': gatewayProblemTemplate(status) },
      });
    }
  }
}
