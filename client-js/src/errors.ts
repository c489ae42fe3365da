/** Every error this client raises is a `MistError`; `code` says which kind. */
export class MistError extends Error {
  constructor(
    message: string,
    /** `broker`: the broker refused the request (see {@link BrokerError}); the others are {@link ConnectionError}s. */
    readonly code: "broker" | ConnectionErrorCode,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * The broker answered a request with an error reply. `message` is the
 * broker's `error` text, unchanged; `command` the command it answered
 * (`""` when the broker could not read one).
 */
export class BrokerError extends MistError {
  constructor(
    message: string,
    readonly command: string,
  ) {
    super(message, "broker");
  }
}

/**
 * - `not-connected`: a request made while there is no connection (a publish
 *   with `queueLimit` 0, the default, or any other request);
 * - `disconnected`: the connection ended before the request was answered, so
 *   whether it took effect is unknown;
 * - `queue-full`: a publish while disconnected, with `queueLimit` publishes
 *   already waiting;
 * - `closed`: `close()` was called.
 */
export type ConnectionErrorCode = "not-connected" | "disconnected" | "queue-full" | "closed";

/** The request could not be carried to the broker, or its answer back. */
export class ConnectionError extends MistError {
  declare readonly code: ConnectionErrorCode;
}
