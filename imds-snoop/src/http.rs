//! Per-socket reassembly, HTTP parsing (httparse), v1/v2 classification and token redaction.
//! (Being written: see the module contract in the helper brief.)
