/**
 * The migrations custom resource answers CloudFormation even when the migration function runs out
 * of time.
 *
 * The CDK provider framework's onEvent function invokes the migration function synchronously and
 * reports its result (or its error) to CloudFormation (aws-cdk-lib custom-resources
 * provider-framework/runtime/framework.js, invokeUserFunction; FRAMEWORK_HANDLER_TIMEOUT 900 s).
 * Lambda's timeout is at most 900 s ("up to a maximum value of 900 seconds (15 minutes)",
 * https://docs.aws.amazon.com/lambda/latest/dg/configuration-timeout.html), and the framework has it.
 * A migration function with the framework's own 900 s is cut off at the moment the framework is:
 * nobody reports FAILED, and CloudFormation waits for the custom resource's ServiceTimeout,
 * "The default value is 3600 seconds (1 hour)"
 * (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-cloudformation-customresource.html),
 * before it fails the deploy and rolls back.
 */
import type { CfnElement } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { resourcesOf, ROOT, SYNTH_HOOK_TIMEOUT_MS, unbundledStage } from './support/synth.js';

/** What the framework needs after the migration function's timeout to send FAILED to CloudFormation. */
const REPORTING_MARGIN_SECONDS = 30;

describe('the migrations custom resource', () => {
  it("ends the migration function well before the provider framework's own timeout, so a migration that runs out of time fails the deploy at once instead of after an hour", () => {
    const stacks = unbundledStage(JSON.parse(readFileSync(join(ROOT, 'config/dev.json'), 'utf8')) as Record<string, unknown>);
    const template = Template.fromStack(stacks.controlPlane);
    const functions = resourcesOf(template, 'AWS::Lambda::Function');
    const migrateId = stacks.controlPlane.getLogicalId(stacks.controlPlane.controlPlane.migrate.function.node.defaultChild as CfnElement);
    const migrate = functions.find(([id]) => id === migrateId)?.[1].Properties;
    const framework = functions.filter(([, fn]) => fn.Properties?.['Handler'] === 'framework.onEvent');
    expect(framework).toHaveLength(1);
    const frameworkTimeout = Number(framework[0]?.[1].Properties?.['Timeout']);
    expect(frameworkTimeout).toBe(900);

    expect(Number(migrate?.['Timeout'])).toBeLessThanOrEqual(frameworkTimeout - REPORTING_MARGIN_SECONDS);
    // Still long enough for a migration that builds an index on a large table.
    expect(Number(migrate?.['Timeout'])).toBeGreaterThanOrEqual(600);
  }, SYNTH_HOOK_TIMEOUT_MS);
});
