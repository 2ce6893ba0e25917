/**
 * The cmapp wire protocol: framing, messages, versions, and a message
 * channel over any byte stream (see docs/PROTOCOL.md); and the gathering
 * reader both programs feed data frames from.
 *
 * @example
 * ```ts
 * import { encodeFrame, encodeMessage, FrameDecoder, decodeClientMessage } from "./mod.ts";
 * const frame = encodeFrame(encodeMessage({ type: "ping", id: 7 }));
 * const [payload] = new FrameDecoder().push(frame);
 * decodeClientMessage(payload); // { type: "ping", id: 7 }
 * ```
 *
 * @module
 */
export * from "./framing.ts";
export * from "./messages.ts";
export * from "./version.ts";
export * from "./features.ts";
export * from "./exit_status.ts";
export * from "./format_argv.ts";
export * from "./channel.ts";
export * from "./stream_channels.ts";
export * from "./read_ahead.ts";
