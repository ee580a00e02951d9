//! Support shared by the appliance's tests and its benchmark program (never by the appliance
//! itself): [`fake_http`], a receiver on a real socket that answers as the fake service it is
//! given decides, and [`fake_exment`], the Exment API on it.

pub mod fake_exment;
pub mod fake_http;
