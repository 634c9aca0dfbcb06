/**
 * The demo backend's health endpoints, in a module of their own so that the deployment
 * configuration can check a service's `healthCheckPath` against them without loading the server.
 * The container health check probes `/health`, the read pool's target group `/health/readonly`.
 */
export const HEALTH_PATHS = ['/health', '/health/readonly'] as const;
