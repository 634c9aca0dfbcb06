/**
 * Logical IDs that CDK derives from a construct's full path (`Names.uniqueId`) rather than from
 * its path inside the stack: a generated database secret (`rds.Credentials.fromGeneratedSecret`
 * names its `AWS::SecretsManager::Secret` that way, so a change of password rules replaces it).
 * The full path includes the stage (`Dev/data/...`), so putting the stacks in a `Stage` would
 * rename, hence replace, such a resource: a new admin password for a database that keeps its data.
 * {@link keepStackRootedLogicalId} gives it back the ID it had when its stack was a top-level
 * construct named by its stack name.
 *
 * @example
 * ```ts
 * keepStackRootedLogicalId(primary.node.findChild('Secret')); // CaDmsdevdataShard001PrimarySecret8B55432A…
 * ```
 */
import { createHash } from 'node:crypto';
import { CfnElement, Names, Stack } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

// The constants and steps of CDK's `makeUniqueId` (aws-cdk-lib/core/lib/private/uniqueid),
// which is not exported; test/infra/stateful-ids.test.ts pins the result against the IDs
// synthesized before the stages.
const HIDDEN_ID = 'Default';
const HIDDEN_FROM_HUMAN_ID = 'Resource';
const MAX_HUMAN_LEN = 240;
const MAX_ID_LEN = 255;

/** `Names.uniqueId` of `construct` as if its stack were a child of the app with id = stack name. */
export function stackRootedUniqueId(construct: IConstruct): string {
  const stack = Stack.of(construct);
  const inStack = construct.node.scopes.slice(stack.node.scopes.length).map((c) => c.node.id);
  const components = [stack.stackName, ...inStack].filter((c) => c !== HIDDEN_ID);
  const alphanumeric = (s: string): string => s.replace(/[^A-Za-z0-9]/g, '');
  const hash = createHash('md5').update(components.join('/')).digest('hex').slice(0, 8).toUpperCase();
  const human: string[] = [];
  for (const c of components) if (human.length === 0 || !human[human.length - 1]!.endsWith(c)) human.push(c);
  return (
    human
      .filter((c) => c !== HIDDEN_FROM_HUMAN_ID)
      .map(alphanumeric)
      .join('')
      .slice(0, MAX_HUMAN_LEN) + hash
  );
}

/**
 * Replaces the full-path part of the logical ID of `construct`'s CloudFormation resource (which
 * CDK set from `Names.uniqueId`) by {@link stackRootedUniqueId}, keeping what CDK appended.
 */
export function keepStackRootedLogicalId(construct: IConstruct): void {
  const resource = construct.node.defaultChild;
  if (!(resource instanceof CfnElement)) throw new Error(`${construct.node.path} has no CloudFormation resource`);
  const current = Stack.of(construct).resolve(resource.logicalId) as string;
  const prefix = Names.uniqueId(construct);
  if (!current.startsWith(prefix)) throw new Error(`${construct.node.path}: logical ID ${current} is not derived from its path`);
  resource.overrideLogicalId((stackRootedUniqueId(construct) + current.slice(prefix.length)).slice(-MAX_ID_LEN));
}
