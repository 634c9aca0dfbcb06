import { DeploymentConfigError, parseDeploymentConfig, type ConfigIssue } from '../../../lib/config/deployment-config.js';

/** The configuration issues `build` raises (none when it succeeds); any other error is rethrown. */
export function configIssuesOf(build: () => unknown): ConfigIssue[] {
  try {
    build();
    return [];
  } catch (error) {
    if (error instanceof DeploymentConfigError) return [...error.issues];
    throw error;
  }
}

/** The issues `parseDeploymentConfig` finds in `input`. */
export const problemsOf = (input: unknown): ConfigIssue[] => configIssuesOf(() => parseDeploymentConfig(input));
