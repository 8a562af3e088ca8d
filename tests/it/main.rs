//! pmoflow's integration tests: one binary, real databases, the real daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod browser;
mod chaos;
mod cli;
mod cluster;
mod crash;
mod domain_check;
mod door;
mod egress;
mod engine;
mod faults;
mod golden;
mod mail_oauth;
mod notify;
mod plugins;
mod portfolio;
mod reload;
mod replies;
mod requests;
mod schedule;
mod scheduling;
mod shipped;
mod simulate;
mod store;
mod workbook;
