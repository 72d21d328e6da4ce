//! Which backups backstop's transfer-manager actions leave to the stock scripts they replaced
//! (installed beside them as `<action>.backstop-stock`): what backstop does not do itself is run
//! by OpenNebula's own script, with the same argv, stdin and environment, its output and exit
//! status passed through (docs/host-side.md).

use backstop_protocol::message::Vm;

/// Beside each transfer-manager action backstop replaces (with `--with-tm`): the stock script
/// it replaced, run when backstop hands a backup step over to it. Kept in the driver's own
/// directory, so that the script finds its libraries (`../lib`) as it did; the copy in
/// backstop/replaced/ is what an uninstall puts back.
pub const STOCK_SUFFIX: &str = ".backstop-stock";

/// Why the stock script runs `vm`'s backup step instead of backstop; `None` when backstop
/// does it.
pub fn reason(vm: &Vm) -> Option<String> {
    let bc = &vm.backup_config;
    if bc.interactive {
        return Some(format!(
            "VM {}: an interactive backup (BACKUP_CONFIG/INTERACTIVE): the stock script prepares its exports",
            vm.id
        ));
    }
    // INCREMENT_MODE=SNAPSHOT is backstop's own (crate::snapshot_mode), in the stock
    // layout, so either can take the next backup.
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_protocol::message::vm_from_siblings;

    fn vm(backup_config: &str) -> Vm {
        let xml = format!(
            "<VM><ID>7</ID><TEMPLATE/><BACKUPS><BACKUP_CONFIG>{backup_config}</BACKUP_CONFIG></BACKUPS></VM>"
        );
        let roots = backstop_protocol::input::decode_siblings(
            xml.as_bytes(),
            backstop_protocol::input::Encoding::RawXml,
        )
        .expect("xml");
        vm_from_siblings(&roots).expect("vm")
    }

    #[test]
    fn interactive_backups_go_to_the_stock_script() {
        assert_eq!(reason(&vm("<MODE>FULL</MODE>")), None);
        assert_eq!(
            reason(&vm(
                "<MODE>INCREMENT</MODE><INCREMENT_MODE>CBT</INCREMENT_MODE>"
            )),
            None
        );
        assert!(
            reason(&vm("<MODE>FULL</MODE><INTERACTIVE>YES</INTERACTIVE>"))
                .is_some_and(|r| r.contains("interactive"))
        );
        assert_eq!(
            reason(&vm(
                "<MODE>INCREMENT</MODE><INCREMENT_MODE>SNAPSHOT</INCREMENT_MODE>"
            )),
            None
        );
    }
}
