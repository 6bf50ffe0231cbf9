/**
 * @file `npm run bench:charts`: re-renders every benchmark chart (`bench/results/charts/*.svg`) from the results
 * files in `bench/results/` (see `lib/charts.ts`); runs no benchmark.
 */
import { fileURLToPath } from 'node:url';
import { renderCharts } from './lib/charts.ts';

const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url));
for (const path of await renderCharts(RESULTS_DIR)) process.stderr.write(`wrote ${path}\n`);
