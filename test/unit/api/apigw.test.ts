/**
 * From an API Gateway proxy event to the API's request: the client's header and query names are
 * data, whatever they are called.
 */
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { describe, expect, it } from 'vitest';
import { fromApiGatewayEvent } from '../../../functions/api/apigw.js';

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
