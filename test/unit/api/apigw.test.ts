/**
 * From an API Gateway proxy event to the API's request: the client's header and query names are
 * data, whatever they are called; and the request's deadline, by which its route answers.
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { describe, expect, it } from 'vitest';
import { API_ANSWER_MARGIN_MS, fromApiGatewayEvent, requestDeadlineOf } from '../../../functions/api/apigw.js';

describe('fromApiGatewayEvent', () => {
  it('keeps query and header names such as __proto__ and constructor as plain keys', () => {
    // As API Gateway delivers it: JSON, where "__proto__" is an ordinary own key.
    const event = JSON.parse(
      '{"httpMethod":"GET","path":"/api/v1/scaling/status","headers":{"__proto__":"h","Constructor":"c"},"queryStringParameters":{"__proto__":"1","constructor":"2","toString":"3"},"body":null}',
    ) as APIGatewayProxyEvent;

    const request = fromApiGatewayEvent(event);

    expect(Object.getPrototypeOf(request.query)).toBeNull();
    expect(Object.entries(request.query)).toEqual([
      ['__proto__', '1'],
      ['constructor', '2'],
      ['toString', '3'],
    ]);
    expect(Object.entries(request.headers)).toEqual([
      ['__proto__', 'h'],
      ['constructor', 'c'],
    ]);
  });

  it('names the query parameters API Gateway received more than once, of which queryStringParameters keeps only the last value', () => {
    const event = {
      httpMethod: 'GET',
      path: '/api/v1/scaling/history',
      headers: {},
      queryStringParameters: { service: 'frontend', limit: '5' },
      multiValueQueryStringParameters: { service: ['worker', 'frontend'], limit: ['5'] },
      body: null,
    } as unknown as APIGatewayProxyEvent;

    const request = fromApiGatewayEvent(event);

    expect(request.query['service']).toBe('frontend');
    expect(request.repeatedQuery).toEqual(['service']);
  });
});

describe('requestDeadlineOf', () => {
  const now = 1_800_000_000_000;
  const left = (remainingMs: number | undefined, receivedAgoMs: number | undefined): number =>
    requestDeadlineOf(
      { requestContext: receivedAgoMs === undefined ? {} : { requestTimeEpoch: now - receivedAgoMs } },
      remainingMs === undefined ? {} : { getRemainingTimeInMillis: () => remainingMs },
      now,
    ) -
    now +
    API_ANSWER_MARGIN_MS;

  it("is API Gateway's 29 s from when it received the request, or the function's own end, whichever comes first, less the answer margin", () => {
    // A cold start and the first request's sharding runtime took 6 s of API Gateway's time.
    expect(left(29_000, 6_000)).toBe(23_000);
    // A function timeout of 10 s.
    expect(left(10_000, 100)).toBe(10_000);
    expect(API_ANSWER_MARGIN_MS).toBe(2_000);
  });

  it("falls back on the function's end where API Gateway's has passed or is not given (a test event), and on 29 s with neither", () => {
    expect(left(20_000, 60_000)).toBe(20_000);
    expect(left(20_000, undefined)).toBe(20_000);
    expect(left(undefined, undefined)).toBe(29_000);
    expect(left(Number.NaN, 1_000)).toBe(28_000);
  });
});
