//! Support shared by the appliance's tests and its benchmark program (never by the appliance
//! itself): [`fake_http`], a receiver on a real socket that answers as the fake service it is
//! given decides.

pub mod fake_http;
