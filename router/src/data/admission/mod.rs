//! Owns: who gets in: the pending and live pools (caps, byte budget, per source), the
//! policy (Origin allowlist, rate per source, cap per tenant), who is asking, and
//! whether their token opens the tenant (`auth`).
//! May not touch: listeners, HTTP answers or backend connections; it says yes or no,
//! counts, and names who is asking (the forwarding headers say so to the backend).

pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod forwarded;
pub(crate) mod policy;
pub(crate) mod pools;
