// An example console: a rep accepts the sessions offered to it and ends each one.
//
//   ASSIGNCORE_URL=http://127.0.0.1:50051 ASSIGNCORE_TOKEN=<rep token> \
//   ASSIGNCORE_SESSIONS=1 node dist/examples/console.js
//
// It prints one JSON line per event and per action, and exits once it has ended
// ASSIGNCORE_SESSIONS sessions (default 1).
import { ActionError, Console } from "../src/console.js";

const baseUrl = process.env["ASSIGNCORE_URL"] ?? "http://127.0.0.1:50051";
const token = process.env["ASSIGNCORE_TOKEN"] ?? "";
const wanted = Number(process.env["ASSIGNCORE_SESSIONS"] ?? "1");

const say = (line: object): void => {
  process.stdout.write(`${JSON.stringify(line)}\n`);
};

const console_ = new Console({ baseUrl, token, initialBackoffMs: 20, maxBackoffMs: 200 });
let ended = 0;
for await (const event of console_) {
  say({ event: event.event.case, sequence: event.sequence.toString() });
  if (event.event.case !== "offerMade") continue;
  const offerId = event.event.value.offerId;
  try {
    // An offer can be gone by the time it is answered (rescinded when a dropped
    // connection made the rep ineligible, or expired): the server offers the session
    // again, to this rep or another. An action whose connection dropped before its
    // result came has OUTCOME_UNKNOWN: the session's own events tell what happened.
    const session = await console_.answer(offerId);
    if (!session) continue;
    say({ accepted: session.id });
    await console_.end(session.id);
    say({ ended: session.id });
  } catch (err) {
    if (!(err instanceof ActionError)) throw err;
    say({ failed: offerId, code: String(err.code), message: err.message });
    continue;
  }
  if (++ended >= wanted) break;
}
if (console_.failure) {
  say({ error: console_.failure.code, message: console_.failure.message });
  process.exitCode = 1;
}
await console_.close();
