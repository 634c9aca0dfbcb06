/**
 * The deployment's growing configuration read from SSM Parameter Store at cold start
 * (functions/handlers/shared/parameter-env.ts), against aws-sdk-client-mock.
 */
import { GetParametersCommand, SSMClient } from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';
import { afterEach, describe, expect, it } from 'vitest';
import { EnvironmentError } from '../../../functions/handlers/shared/env.js';
import { loadParameterEnv, readParameterEnv } from '../../../functions/handlers/shared/parameter-env.js';

const ssm = mockClient(SSMClient);
afterEach(() => ssm.reset());

/** Answers GetParameters from `store`, listing unknown names as InvalidParameters like SSM does. */
function serve(store: Record<string, string>): void {
  ssm.on(GetParametersCommand).callsFake((input: { Names: string[] }) => ({
    Parameters: input.Names.filter((n) => n in store).map((n) => ({ Name: n, Value: store[n] })),
    InvalidParameters: input.Names.filter((n) => !(n in store)),
  }));
}

describe('readParameterEnv', () => {
  it('calls nothing without CONFIG_PARAMETERS', async () => {
    expect(await readParameterEnv({}, new SSMClient({}))).toEqual({});
    expect(ssm.calls()).toHaveLength(0);
  });

  it('maps each variable to its parameter value, reading at most 10 names per call', async () => {
    const mapping = Object.fromEntries(Array.from({ length: 13 }, (_, i) => [`VAR_${i}`, `/p/${i}`]));
    serve(Object.fromEntries(Object.values(mapping).map((p) => [p, `value of ${p}`])));
    const values = await readParameterEnv({ CONFIG_PARAMETERS: JSON.stringify(mapping) }, new SSMClient({}));
    expect(values['VAR_12']).toBe('value of /p/12');
    expect(Object.keys(values)).toHaveLength(13);
    const calls = ssm.commandCalls(GetParametersCommand);
    expect(calls.map((c) => c.args[0].input.Names?.length)).toEqual([10, 3]);
  });

  it('names the variable whose parameter does not exist', async () => {
    serve({ '/p/a': '{}' });
    const read = readParameterEnv({ CONFIG_PARAMETERS: JSON.stringify({ SCALING_CONFIG_JSON: '/p/a', SHARDING_CONFIG_JSON: '/p/gone' }) }, new SSMClient({}));
    await expect(read).rejects.toThrow(EnvironmentError);
    await expect(read).rejects.toThrow('CONFIG_PARAMETERS.SHARDING_CONFIG_JSON: SSM parameter "/p/gone" not found');
  });

  it('rejects a malformed mapping with the offending path and calls nothing', async () => {
    await expect(readParameterEnv({ CONFIG_PARAMETERS: '{"lower": "/p"}' }, new SSMClient({}))).rejects.toThrow('CONFIG_PARAMETERS.lower');
    await expect(readParameterEnv({ CONFIG_PARAMETERS: '[' }, new SSMClient({}))).rejects.toThrow('CONFIG_PARAMETERS: not valid JSON');
    expect(ssm.calls()).toHaveLength(0);
  });
});

describe('loadParameterEnv', () => {
  it('fills the environment, keeping variables an operator set', async () => {
    serve({ '/p/a': 'from ssm a', '/p/b': 'from ssm b' });
    const env: Record<string, string | undefined> = { CONFIG_PARAMETERS: JSON.stringify({ A: '/p/a', B: '/p/b' }), B: 'operator' };
    await loadParameterEnv(env, new SSMClient({}));
    expect(env).toMatchObject({ A: 'from ssm a', B: 'operator' });
  });
});
