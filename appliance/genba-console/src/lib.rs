//! The web console (requirement W1): pages rendered on the server from the store's types,
//! charts as SVG, English and Japanese, and the small CSS/JS assets, all embedded in the
//! binary. It only renders; the HTTP bridge (genba-bridge `console` module) fetches the data,
//! checks the login and serves what this crate returns. Nothing here reaches the network.

pub mod chart;
pub mod i18n;
pub mod layout;
pub mod pages;
pub mod provision;

pub use i18n::{tr, Lang};
pub use layout::{Flash, Nav, Role, Viewer};
