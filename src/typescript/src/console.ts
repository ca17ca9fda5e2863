// A rep's console on assigncore's `Connect` stream (RepConsoleService), for web back ends
// and Electron consoles. It does what the Python client's Console does for the protocol:
//
// - events come in feed order, each exactly once, across dropped connections, restarts
//   and failovers: it reconnects with backoff and full jitter and resumes with
//   `resumeAfter` set to the last event it received (a `resyncRequired` event says that
//   the missed events are gone and the caller must reload);
// - actions carry an action id and are matched with their results by id, never by order;
//   each resolves with its response or rejects with an ActionError carrying the unary
//   RPC's status code, message and decoded details;
// - an action sent before a connection dropped and not answered rejects with
//   OUTCOME_UNKNOWN; one made while disconnected waits for the next stream;
// - it follows the leader named by a NOT_LEADER refusal, and `useToken` switches to a
//   rotated token without losing an event.

import { create, createRegistry, type MessageInitShape } from "@bufbuild/protobuf";
import { type Any, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import type { Session } from "../gen/assigncore/v1/common_pb.js";
import {
  type ActionResult,
  ConnectRequestSchema,
  type ConnectRequest,
  type ConnectResponse,
  RepConsoleService,
  type SubscribeResponse,
} from "../gen/assigncore/v1/console_service_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  type BadRequest,
  type ErrorInfo,
} from "../gen/google/rpc/error_details_pb.js";

const details = createRegistry(BadRequestSchema, ErrorInfoSchema);

/** Statuses that end a console: reconnecting cannot mend them. */
const FINAL = new Set<Code>([
  Code.PermissionDenied,
  Code.InvalidArgument,
  Code.NotFound,
  Code.Aborted, // a newer console of the same rep took over
  Code.Unimplemented,
  Code.FailedPrecondition,
]);

/** The error of an action, or of the console itself: a gRPC status with its details. */
export class ActionError extends Error {
  constructor(
    readonly code: Code | "OUTCOME_UNKNOWN",
    message: string,
    readonly details: Any[] = [],
  ) {
    super(message);
    this.name = "ActionError";
  }

  /** google.rpc.ErrorInfo, if the status has one (its `reason`: NOT_LEADER, ...). */
  errorInfo(): ErrorInfo | undefined {
    for (const d of this.details) {
      const m = anyUnpack(d, details);
      if (m?.$typeName === "google.rpc.ErrorInfo") return m as ErrorInfo;
    }
    return undefined;
  }

  /** google.rpc.BadRequest field violations, as (field, description) pairs. */
  violations(): { field: string; description: string }[] {
    for (const d of this.details) {
      const m = anyUnpack(d, details);
      if (m?.$typeName === "google.rpc.BadRequest") {
        return (m as BadRequest).fieldViolations.map((v) => ({
          field: v.field,
          description: v.description,
        }));
      }
    }
    return [];
  }
}

/** A queue whose reader waits for the next value (iterated by an async generator, which
 * has the `return` and `throw` that connect's request streams call). */
class Channel<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: ((item: T | undefined) => void)[] = [];
  private closed = false;

  push(item: T): void {
    const w = this.waiting.shift();
    if (w) w(item);
    else this.items.push(item);
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w(undefined);
  }

  private take(): Promise<T | undefined> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      const item = await this.take();
      if (item === undefined) return;
      yield item;
    }
  }
}

type Action = Exclude<ConnectRequest["action"], { case: "subscribe" } | { case: undefined }>;
type Response = ActionResult["response"];

interface Pending {
  message: ConnectRequest;
  sent: boolean;
  resolve: (r: Response) => void;
  reject: (e: ActionError) => void;
}

export interface ConsoleOptions {
  /** The server, as "http://HOST:PORT" (plaintext) or "https://HOST:PORT". */
  baseUrl: string;
  /** The rep's access token. */
  token: string;
  /** The last event already processed (0: a fresh start). */
  resumeAfter?: bigint;
  /** Backoff between reconnects, with full jitter. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Makes the transport for a base URL (TLS options, interceptors). */
  transport?: (baseUrl: string) => Transport;
}

export class Console implements AsyncIterable<SubscribeResponse> {
  /** The last event received: where a resume starts. */
  lastSequence: bigint;
  repId = "";
  connected = false;
  reconnects = 0;
  private token: string;
  private baseUrl: string;
  private readonly options: ConsoleOptions;
  private readonly events = new Channel<SubscribeResponse>();
  private readonly pending = new Map<string, Pending>();
  private outgoing: Channel<ConnectRequest> | undefined;
  private abort: AbortController | undefined;
  private nextId = 1;
  private closing = false;
  private error: ActionError | undefined;
  private running: Promise<void> | undefined;
  private switching = false;

  constructor(options: ConsoleOptions) {
    this.options = options;
    this.baseUrl = options.baseUrl;
    this.token = options.token;
    this.lastSequence = options.resumeAfter ?? 0n;
  }

  /** Why the console ended, when it ended by itself (the event iteration stops). */
  get failure(): ActionError | undefined {
    return this.closing ? undefined : this.error;
  }

  /** Starts following the feed (events are iterated with `for await`). */
  start(): this {
    this.running ??= this.run();
    return this;
  }

  [Symbol.asyncIterator](): AsyncIterator<SubscribeResponse> {
    this.start();
    return this.events[Symbol.asyncIterator]();
  }

  /** Ends the console (the server keeps the rep's sessions for its grace period). */
  async close(): Promise<void> {
    this.closing = true;
    this.outgoing?.close();
    this.abort?.abort();
    await this.running;
    this.finish(new ActionError(Code.Canceled, "the console was closed"));
  }

  /** Switches to a rotated token: the stream reconnects with it and resumes. */
  useToken(token: string): void {
    this.token = token;
    this.switching = true;
    this.maybeSwitch();
  }

  // ------------------------------------------------------------------ actions

  /** Sends an action; resolves with its response or rejects with an ActionError. */
  act(action: MessageInitShape<typeof ConnectRequestSchema>["action"]): Promise<Response> {
    if (this.error) return Promise.reject(this.error);
    const actionId = String(this.nextId++);
    const message = create(ConnectRequestSchema, { actionId, action });
    return new Promise<Response>((resolve, reject) => {
      const entry: Pending = { message, sent: false, resolve, reject };
      this.pending.set(actionId, entry);
      if (this.outgoing && !this.switching) {
        entry.sent = true;
        this.outgoing.push(message);
      }
    });
  }

  async answer(offerId: string, accept = true): Promise<Session | undefined> {
    const r = await this.act({ case: "answerOffer", value: { offerId, accept } });
    return r.case === "answerOffer" ? r.value.session : undefined;
  }

  async accept(sessionId: string): Promise<Session | undefined> {
    const r = await this.act({ case: "acceptSession", value: { sessionId } });
    return r.case === "acceptSession" ? r.value.session : undefined;
  }

  async end(sessionId: string): Promise<void> {
    await this.act({ case: "endSession", value: { sessionId } });
  }

  async getNext(): Promise<Session | undefined> {
    const r = await this.act({ case: "getNextSession", value: {} });
    return r.case === "getNextSession" ? r.value.session : undefined;
  }

  // ------------------------------------------------------------------ the stream

  private async run(): Promise<void> {
    let delay = 0;
    const initial = this.options.initialBackoffMs ?? 200;
    const max = this.options.maxBackoffMs ?? 10_000;
    while (!this.closing) {
      const token = this.token;
      let failure: ConnectError | undefined;
      try {
        await this.stream();
      } catch (e) {
        failure = ConnectError.from(e);
      }
      this.disconnected();
      if (this.closing) return;
      let immediate = false;
      if (this.switching) {
        this.switching = false;
        immediate = true;
      } else if (failure) {
        const info = failure.findDetails(ErrorInfoSchema)[0];
        if (failure.code === Code.Unavailable && info?.reason === "NOT_LEADER") {
          const leader = info.metadata["leader"];
          if (leader) {
            this.baseUrl = `${new URL(this.baseUrl).protocol}//${leader}`;
            immediate = true;
          }
        } else if (failure.code === Code.Unauthenticated && this.token === token) {
          return this.finish(new ActionError(failure.code, failure.rawMessage));
        } else if (failure.code === Code.Unauthenticated) {
          immediate = true; // a new token was given: use it
        } else if (FINAL.has(failure.code)) {
          return this.finish(new ActionError(failure.code, failure.rawMessage));
        }
      }
      if (!immediate) {
        delay = delay === 0 ? initial : Math.min(delay * 2, max);
        await new Promise((r) => setTimeout(r, Math.random() * delay));
      }
      this.reconnects++;
    }
  }

  private async stream(): Promise<void> {
    const transport = (this.options.transport ?? defaultTransport)(this.baseUrl);
    const client = createClient(RepConsoleService, transport);
    const outgoing = new Channel<ConnectRequest>();
    outgoing.push(
      create(ConnectRequestSchema, {
        action: { case: "subscribe", value: { resumeAfter: this.lastSequence } },
      }),
    );
    this.abort = new AbortController();
    const replies = client.connect(outgoing, {
      headers: { authorization: `Bearer ${this.token}` },
      signal: this.abort.signal,
    });
    let resyncPending = false;
    for await (const reply of replies as AsyncIterable<ConnectResponse>) {
      if (reply.message.case === "result") {
        this.result(reply.message.value);
        continue;
      }
      if (reply.message.case !== "event") continue;
      const event = reply.message.value;
      const kind = event.event.case;
      if (kind === "welcome") {
        this.repId = event.event.value.repId;
        this.connected = true;
        resyncPending = this.lastSequence > 0n && !event.event.value.resumed;
        if (!resyncPending) {
          if (event.sequence > this.lastSequence) this.lastSequence = event.sequence;
          this.open(outgoing);
        }
        continue;
      }
      if (kind === "resyncRequired") {
        this.lastSequence = event.sequence;
        this.events.push(event);
        if (resyncPending) {
          resyncPending = false;
          this.open(outgoing);
        }
        continue;
      }
      if (kind === "serverDraining" || event.sequence <= this.lastSequence) continue;
      this.lastSequence = event.sequence;
      this.events.push(event);
    }
  }

  private open(outgoing: Channel<ConnectRequest>): void {
    this.outgoing = outgoing;
    for (const p of this.pending.values()) {
      if (!p.sent) {
        p.sent = true;
        outgoing.push(p.message);
      }
    }
  }

  private result(result: ActionResult): void {
    const p = this.pending.get(result.actionId);
    if (!p) return;
    this.pending.delete(result.actionId);
    const status = result.status;
    if (status && status.code !== 0) {
      p.reject(new ActionError(status.code as Code, status.message, status.details));
    } else {
      p.resolve(result.response);
    }
    this.maybeSwitch();
  }

  private maybeSwitch(): void {
    if (!this.switching) return;
    for (const p of this.pending.values()) if (p.sent) return;
    this.outgoing = undefined; // hold new actions for the next stream
    this.abort?.abort();
  }

  private disconnected(): void {
    this.connected = false;
    this.outgoing?.close();
    this.outgoing = undefined;
    for (const [id, p] of this.pending) {
      if (p.sent) {
        this.pending.delete(id);
        p.reject(new ActionError("OUTCOME_UNKNOWN", "the connection dropped before the result"));
      }
    }
  }

  private finish(error: ActionError): void {
    this.error ??= error;
    this.connected = false;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
    this.events.close();
  }
}

function defaultTransport(baseUrl: string): Transport {
  return createGrpcTransport({ baseUrl, pingIntervalMs: 30_000 });
}
