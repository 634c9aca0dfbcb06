/**
 * `npm run docs:tradeoff`: regenerates docs/tradeoff-nasa.svg, the trade-off chart the README
 * shows: on the NASA 1995 trace shipped in data/traces/ (public domain, the trace every figure
 * of the README is measured on), each anchor swept over its main setting, the oracle, and every
 * policy at its defaults, at the simulator's default model.
 */
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { readTraceFile, SHIPPED_TRACE } from '../functions/adapters/sim/trace-file.js';
import { POLICY_NAMES } from '../functions/core/scaling/config.js';
import { contestantsFor } from '../functions/core/scaling/simulator/anchors.js';
import { DEFAULT_MODEL } from '../functions/core/scaling/simulator/model.js';
import { renderTradeoffSvg, tradeoffOf } from '../functions/core/scaling/simulator/report.js';
import { prepareTrace, simulate } from '../functions/core/scaling/simulator/simulate.js';

const OUT = fileURLToPath(new URL('../docs/tradeoff-nasa.svg', import.meta.url));

const file = await readTraceFile(SHIPPED_TRACE);
const trace = prepareTrace(file.name, file.points, DEFAULT_MODEL);
const { result } = simulate(trace, contestantsFor(POLICY_NAMES, DEFAULT_MODEL), DEFAULT_MODEL);
await writeFile(OUT, `${renderTradeoffSvg(tradeoffOf(result, trace, DEFAULT_MODEL))}\n`);
console.log(`wrote ${OUT}: ${file.name}, ${result.ticks} ticks; ${result.results.map((r) => `${r.policy} ${r.taskMinutes} task-min / ${r.sloViolationMinutes} violation-min`).join(', ')}; oracle ${result.oracle.taskMinutes} / ${result.oracle.sloViolationMinutes}`);
