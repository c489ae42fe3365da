export { Client, Subscription } from "./client.js";
export { BrokerError, ConnectionError, MistError, type ConnectionErrorCode } from "./errors.js";
export type {
  ClientEvents,
  ClientOptions,
  Delivery,
  DisconnectReason,
  Message,
  ResubscribeFailure,
  SocketConstructor,
  SocketLike,
  TokenTransport,
} from "./types.js";
