//! Integration tests: the real `lessor` binary against a real PostgreSQL.
//! Every test makes its own admin role and database and asserts on the
//! backend's actual state, not only on lessor's answers.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod audit_intent;
mod audit_log;
mod audit_verify;
mod aws;
mod bad_input;
mod batching;
mod cli;
mod cluster;
mod consumers;
mod containers;
mod crash;
mod fencing;
mod grants;
mod hardening;
mod idempotency;
mod irrevocable;
mod kubernetes;
mod lateness;
mod ldap;
mod lifecycle;
mod listing;
mod metrics;
mod mysql;
mod outage;
mod output_files;
mod packaging;
mod pg_store;
mod plugins;
mod rabbitmq;
mod redis_static;
mod redis_users;
mod rotation;
mod scram;
mod secret_files;
mod secrets;
mod serve;
mod storm;
mod strangers;
mod systemd;
mod tidy;
mod tls;
mod trust;
mod vault;
mod vault_live;
mod vault_shape;
mod window;
