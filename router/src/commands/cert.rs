//! `wsrouter cert`: a dev CA and a server certificate, written as a TLS Secret's files.

use std::process::ExitCode;

use super::exit::{failure, print};
use crate::config::CertArgs;
use crate::data::tls::config::DevCert;

pub(crate) fn run(args: &CertArgs) -> ExitCode {
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    match DevCert::generate(&hosts).and_then(|c| c.write_to(&args.out)) {
        Ok(()) => print(&format!(
            "wrote {0}/ca.crt, {0}/tls.crt, {0}/tls.key for {1}\n",
            args.out.display(),
            hosts.join(", ")
        )),
        Err(e) => failure("writing the certificate", &e),
    }
}
