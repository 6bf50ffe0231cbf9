/** @file `--model` of the CLI commands: a local path, or a Hugging Face id downloaded with progress. */
import { SingleBar } from 'cli-progress';
import { loadHubOptions } from '../config.ts';
import { type HubProgress, resolveModelPath } from '../shared/hub/index.ts';

/**
 * The local folder or file for `spec` (see `resolveModelPath`). Download progress goes to stderr: a bar on a
 * terminal, else one line per file (a redrawn bar is noise in a log).
 */
export async function resolveCliModel(spec: string): Promise<string> {
  let bar: SingleBar | undefined;
  let lastFile: string | undefined;
  const onProgress = ({ file, bytes, totalBytes }: HubProgress) => {
    if (!process.stderr.isTTY) {
      if (file !== lastFile) process.stderr.write(`download ${file}\n`);
      lastFile = file;
      return;
    }
    if (!bar) {
      bar = new SingleBar({ format: 'download [{bar}] {percentage}% | {mb} MB | {file}' });
      bar.start(totalBytes, 0, { file, mb: '0.0' });
    }
    bar.update(bytes, { file, mb: (bytes / 1e6).toFixed(1) });
  };
  try {
    return await resolveModelPath(spec, {
      hub: loadHubOptions(),
      onLog: (m) => process.stderr.write(`${m}\n`),
      onProgress,
    });
  } finally {
    bar?.stop();
  }
}
