//! End-to-end tests: real TLS, real WebSocket clients, real backends, all on loopback.

mod attacks;
mod auth;
mod auth_service;
mod breaker;
mod certs;
mod dev;
mod edge;
mod fake_api;
mod files;
mod fleet;
mod harness;
mod hostile;
mod http;
mod http2;
mod http_backend;
mod http_hostile;
mod kube;
mod lifecycle;
mod limits;
mod operate;
mod rbac;
mod relay;
mod requests;
mod routing;
mod swaps;
mod tls;
