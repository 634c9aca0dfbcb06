/**
 * An event the moves worker cannot take (not an EventBridge scheduled event) is
 * refused with the fields at fault, as the evaluation function does, and touches nothing.
 */
import '../../support/quiet-powertools.js';
import { describe, expect, it } from 'vitest';
import { createMovesHandler } from '../../../functions/handlers/moves.js';
import { lambdaContext, tick } from './fixtures/moves-handler.js';

describe('the moves worker given an event that is not a scheduled tick', () => {
  it.each([
    ['time', { ...tick, time: 12 }],
    ['detail-type', { ...tick, 'detail-type': 'Object Created' }],
    ['account', { ...tick, account: '12' }],
    ['resources', { ...tick, resources: 'arn:aws:events:eu-west-1:123456789012:rule/x' }],
  ])('names %s and builds no runtime', async (field, event) => {
    let built = 0;
    const handler = createMovesHandler(async () => {
      built += 1;
      return undefined;
    });

    const result = await handler(event, lambdaContext);

    expect(built).toBe(0);
    expect(result).toMatchObject({ accepted: false, ran: [], busy: [], failed: [] });
    expect((result as { issues?: Array<{ path: string }> }).issues?.map((i) => i.path)).toContain(field);
  });

  it('names the root for an event that is not an object', async () => {
    const result = await createMovesHandler(async () => undefined)('tick', lambdaContext);
    expect((result as { issues?: Array<{ path: string }> }).issues?.map((i) => i.path)).toEqual(['(root)']);
  });
});
