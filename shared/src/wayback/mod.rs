//! The way back: what the store holds ([`inventory`]), and the three ways out of it —
//! [`restore`] into a registry, [`export`] to an archive file, [`verify`] in place — with
//! [`trust`], which refuses records written after a chosen time; [`drill`] proves a
//! sample restores whole, and [`status`] says how fresh and how proven a backup is.
//!
//! Owns: reading the store as of a time and proving what it reads. May use: `copy`
//! (verified streams), `source` (the target registry), `store`. Nothing below it uses it.

pub mod drill;
pub mod export;
pub mod inventory;
pub mod restore;
pub mod status;
pub mod trust;
pub mod verify;
