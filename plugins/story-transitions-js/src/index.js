// The component: the `handle` export of the switchyard:handler
// event-handler world, joining handler.js to the world's imports.

import * as cache from 'switchyard:handler/cache@0.1.1';
import * as config from 'switchyard:handler/config@0.1.1';
import * as graph from 'switchyard:handler/graph@0.1.1';
import * as log from 'switchyard:handler/log@0.1.1';

import { HostError, handle as handleWith } from './handler.js';

// An import that returns a WIT `result` throws its error variant
// ({tag, val}) as the `payload` of what it throws.
function call(run) {
  try {
    return run();
  } catch (thrown) {
    const error = thrown?.payload;
    if (error && typeof error.tag === 'string') throw new HostError(error.tag, String(error.val));
    throw thrown;
  }
}

const imports = {
  config: (key) => config.get(key) ?? undefined,
  scan: (pattern, cursor, count) => call(() => cache.scan(pattern, cursor, count)),
  delete: (keys) => call(() => cache.delete(keys)),
  deleteMatching: (patterns) => call(() => cache.deleteMatching(patterns)),
  upsertEntity: (label, id, properties) => call(() => graph.upsertEntity(label, id, properties)),
  log: (level, message, fields) => log.log(level, message, fields),
};

export function handle(event) {
  return handleWith(imports, event);
}
