/**
 * The HTTP vocabulary of the scaling API, independent of API Gateway: a request as the
 * routes see it, a response as they return it, and RFC 9457 problem documents for errors.
 */

/** Who made a request: the IAM principal API Gateway authenticated, or the local caller. */
export interface CallerIdentity {
  /** A stable actor string recorded in the audit trail, e.g. an IAM ARN or `local:127.0.0.1`. */
  readonly actor: string;
  readonly sourceIp?: string;
}

/** A request after transport decoding. Header names are lower-case. */
export interface ApiRequest {
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string | undefined>>;
  /**
   * Query parameter names the client gave more than once (`?service=a&service=b`). `query` holds
   * only the last value, as API Gateway's `queryStringParameters` does; the router refuses them.
   * Sorted, so that local mode and API Gateway build the same request.
   */
  readonly repeatedQuery?: readonly string[];
  readonly headers: Readonly<Record<string, string | undefined>>;
  /** The raw body text, or null when there is none. */
  readonly body: string | null;
  readonly identity: CallerIdentity;
  readonly requestId: string;
}

export interface ApiResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
  /**
   * Milliseconds for which this very response (status, headers, body) answers the same GET again,
   * unless a change is made through the API meanwhile: a snapshot's, whose `Age` has not ticked
   * yet. A server may resend its bytes without dispatching (local mode does); absent means never.
   */
  readonly reuseForMs?: number;
}

/** One invalid field of a request: where it is and what is wrong with it. */
export interface InvalidParam {
  /** Dotted path from the request part, e.g. `body.min_instances` or `query.limit`. */
  readonly name: string;
  readonly reason: string;
}

const TITLES: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  412: 'Precondition Failed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  428: 'Precondition Required',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/**
 * An error the API answers with an RFC 9457 problem document.
 *
 * @example
 * ```ts
 * throw new ProblemError(412, 'the configuration changed since version 3', { type: 'stale-version' });
 * ```
 */
export class ProblemError extends Error {
  override readonly name = 'ProblemError';
  readonly title: string;
  readonly type: string;
  readonly invalidParams: readonly InvalidParam[];
  readonly headers: Readonly<Record<string, string>>;
  constructor(
    readonly status: number,
    readonly detail: string,
    options: {
      type?: string;
      title?: string;
      invalidParams?: readonly InvalidParam[];
      headers?: Record<string, string>;
      cause?: unknown;
    } = {},
  ) {
    super(detail, { cause: options.cause });
    this.title = options.title ?? TITLES[status] ?? 'Error';
    this.type = options.type ?? `https://ca-dms-scaling.dev/problems/${slug(this.title)}`;
    this.invalidParams = options.invalidParams ?? [];
    this.headers = options.headers ?? {};
  }
}

function slug(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/(^-|-$)/g, '');
}

/** The problem document body, as served with `application/problem+json`. */
export interface ProblemDocument {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly instance?: string;
  readonly invalid_params?: readonly InvalidParam[];
}

/** Shapes a problem response. Never includes stacks, causes or connection strings. */
export function problemResponse(err: ProblemError, instance?: string): ApiResponse {
  const doc: ProblemDocument = {
    type: err.type,
    title: err.title,
    status: err.status,
    detail: err.detail,
    ...(instance ? { instance } : {}),
    ...(err.invalidParams.length > 0 ? { invalid_params: err.invalidParams } : {}),
  };
  return {
    status: err.status,
    headers: { 'content-type': 'application/problem+json', 'cache-control': 'no-store', ...err.headers },
    body: JSON.stringify(doc),
  };
}

/** A JSON response with the API's standard headers. */
export function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): ApiResponse {
  return {
    status,
    headers: { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers },
    body: JSON.stringify(body),
  };
}
