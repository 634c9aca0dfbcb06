/**
 * The guide's scaling variables given to local mode (`MIN_INSTANCES`, ...) do not fit the
 * scaling configuration stored in its data (`MIN_INSTANCES=8` with a stored `max_instances` of 5):
 * nothing was written; the CLI says which variable and exits 2, as for a bad flag. Its own module
 * so that the CLI can name it without loading local mode.
 */
export class LocalEnvironmentError extends Error {
  override readonly name = 'LocalEnvironmentError';
}
