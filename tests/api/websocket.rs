//! The WebSocket: messages, lifecycle, reconnects, restarts, bad frames.
