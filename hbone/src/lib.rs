//! HBONE: the mTLS + HTTP/2 CONNECT tunnel between node proxies.
#![forbid(unsafe_code)]
