//! The storage layer's error: what failed (a message naming the file or the request) and the
//! I/O error beneath it when there is one. Secrets never enter a message.

backstop_fault::error_type!();
