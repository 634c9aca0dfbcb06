// Imported first by tests and benchmarks that run the Lambda handlers in-process: Powertools reads these
// when its Logger and Metrics are constructed, so they must be set before any handler import.
process.env['POWERTOOLS_LOG_LEVEL'] = 'SILENT';
process.env['POWERTOOLS_TRACE_ENABLED'] = 'false';
process.env['POWERTOOLS_METRICS_DISABLED'] = 'true';
