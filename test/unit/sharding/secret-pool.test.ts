import { describe, expect, it } from 'vitest';
import { isAuthenticationFailure } from '../../../functions/adapters/postgres/secret-pool.js';

describe('isAuthenticationFailure: which errors make a SecretPool read its secret again', () => {
  it('takes every SQLSTATE of class 28: PostgreSQL\'s wrong password and unknown user, and any code RDS Proxy may send in that class', () => {
    expect(['28P01', '28000', '28P02'].map((code) => isAuthenticationFailure({ code }))).toEqual([true, true, true]);
  });

  it('leaves every other failure alone: a connection ended, a server shutting down, a statement error, no code at all', () => {
    expect(['57P01', '08006', '42501', '2800', undefined].map((code) => isAuthenticationFailure({ code }))).toEqual([false, false, false, false, false]);
    expect([new Error('Connection terminated unexpectedly'), null, 'password authentication failed'].map(isAuthenticationFailure)).toEqual([false, false, false]);
  });
});
