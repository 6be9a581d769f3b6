//! Which kernel functions exist, and under which name: `/proc/kallsyms`.
//!
//! A function's symbol may carry a compiler suffix (`.isra.0`,
//! `.constprop.0`) when the compiler specialised it; a kprobe must name the
//! symbol as listed. `.part.N` and `.cold` are fragments of a function, not
//! its entry, so they never stand for it.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    sync::OnceLock,
};

/// Function symbols of the running kernel (text symbols only).
///
/// Read on first lookup: only kprobes (and `fusetrace doctor`) need it, and
/// it costs megabytes that a run on tracepoints would carry for nothing.
#[derive(Debug, Default, Clone)]
pub struct Kallsyms {
    table: OnceLock<Table>,
    /// Read `/proc/kallsyms` on first use (else the table stays empty).
    from_running_kernel: bool,
}

/// The symbols themselves.
///
/// Kept compact: a kernel has over 100 000 of them and only a handful are
/// ever looked up, so a name is stored once (as the key) unless the
/// compiler made specialised copies of it, and module names are interned.
#[derive(Debug, Default, Clone)]
struct Table {
    /// Base name (suffix stripped) to the symbols it appears under.
    functions: HashMap<Box<str>, Symbols>,
    /// Module names; `Symbols` refer to them by index.
    modules: Vec<Box<str>>,
}

/// Where one base name appears: `None` module means vmlinux.
#[derive(Debug, Clone)]
enum Symbols {
    /// Only under its own name (the map key): nearly every function.
    Plain { module: Option<u16> },
    /// Under several names (the plain one and/or specialised copies).
    Several(Vec<(Box<str>, Option<u16>)>),
}

/// Suffixes the compiler adds to a specialised copy that is still a
/// complete function (a kprobe at its start sees every call).
const WHOLE_FUNCTION_SUFFIXES: &[&str] = &[".isra.", ".constprop.", ".llvm."];

impl Kallsyms {
    /// `/proc/kallsyms` of the running kernel, read at the first lookup;
    /// empty when unreadable.
    pub fn from_running_kernel() -> Kallsyms {
        Kallsyms {
            table: OnceLock::new(),
            from_running_kernel: true,
        }
    }

    /// Parses kallsyms text: `ADDR TYPE NAME [MODULE]` per line.
    pub fn parse(text: &str) -> Kallsyms {
        let mut t = Table::default();
        for line in text.lines() {
            t.add_line(line);
        }
        Kallsyms {
            table: OnceLock::from(t),
            from_running_kernel: false,
        }
    }

    /// Whether the symbols were read (or given) already.
    pub fn is_loaded(&self) -> bool {
        self.table.get().is_some()
    }

    fn table(&self) -> &Table {
        self.table.get_or_init(|| {
            if self.from_running_kernel {
                Table::read_running_kernel()
            } else {
                Table::default()
            }
        })
    }

    /// The symbol to probe for function `name`: the plain name when listed,
    /// else its one specialised copy. `None` when absent (inlined, or not in
    /// this version) or ambiguous (several specialised copies).
    pub fn resolve(&self, name: &str) -> Option<&str> {
        self.table().resolve(name)
    }

    /// The first of `candidates` this kernel has, with the symbol to probe.
    pub fn first_of<'a>(&self, candidates: &[&'a str]) -> Option<(&'a str, &str)> {
        candidates
            .iter()
            .find_map(|c| self.resolve(c).map(|sym| (*c, sym)))
    }

    /// The module holding function `name` (`None`: vmlinux or absent).
    pub fn module_of(&self, name: &str) -> Option<&str> {
        self.table().module_of(name)
    }

    pub fn is_empty(&self) -> bool {
        self.table().functions.is_empty()
    }
}

impl Table {
    /// Read line by line: the text is megabytes.
    fn read_running_kernel() -> Table {
        let mut t = Table::default();
        if let Ok(file) = std::fs::File::open("/proc/kallsyms") {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                t.add_line(&line);
            }
        }
        t
    }

    fn add_line(&mut self, line: &str) {
        let mut fields = line.split_whitespace();
        let (Some(_addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        if !matches!(kind, "t" | "T") {
            return;
        }
        let module = fields
            .next()
            .map(|m| self.module_index(m.trim_matches(|c| c == '[' || c == ']')));
        let base = match name.find('.') {
            None => name,
            Some(dot) => {
                let suffix = &name[dot..];
                if !WHOLE_FUNCTION_SUFFIXES
                    .iter()
                    .any(|s| suffix.starts_with(s))
                {
                    return;
                }
                &name[..dot]
            }
        };
        match self.functions.get_mut(base) {
            None => {
                let symbols = if name == base {
                    Symbols::Plain { module }
                } else {
                    Symbols::Several(vec![(name.into(), module)])
                };
                self.functions.insert(base.into(), symbols);
            }
            Some(Symbols::Plain { module: first }) => {
                let first = *first;
                self.functions.insert(
                    base.into(),
                    Symbols::Several(vec![(base.into(), first), (name.into(), module)]),
                );
            }
            Some(Symbols::Several(v)) => v.push((name.into(), module)),
        }
    }

    fn module_index(&mut self, module: &str) -> u16 {
        match self.modules.iter().rposition(|m| &**m == module) {
            Some(i) => i as u16,
            None => {
                self.modules.push(module.into());
                (self.modules.len() - 1) as u16
            }
        }
    }

    fn resolve(&self, name: &str) -> Option<&str> {
        let (key, symbols) = self.functions.get_key_value(name)?;
        let names = match symbols {
            Symbols::Plain { .. } => return Some(key),
            Symbols::Several(names) => names,
        };
        if let Some((exact, _)) = names.iter().find(|(n, _)| &**n == name) {
            return Some(exact);
        }
        match names.as_slice() {
            [(only, _)] => Some(only),
            _ => None,
        }
    }

    fn module_of(&self, name: &str) -> Option<&str> {
        let module = match self.functions.get(name)? {
            Symbols::Plain { module } => *module,
            Symbols::Several(names) => names.iter().find_map(|(_, m)| *m),
        };
        module.map(|i| &*self.modules[i as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Excerpts of real kallsyms: 6.1 (FUSE a module) and 6.18 (built in).
    const DEBIAN_6_1: &str = "\
0000000000000000 T fuse_simple_request\t[fuse]
0000000000000000 t queue_request_and_unlock\t[fuse]
0000000000000000 T fuse_request_end\t[fuse]
0000000000000000 t fuse_dev_do_read\t[fuse]
0000000000000000 t lock_request.part.0\t[fuse]
0000000000000000 t sg_init_fuse_args.isra.0\t[virtiofs]
0000000000000000 t virtio_fs_get_tree.cold\t[virtiofs]
0000000000000000 t virtio_fs_vq_done\t[virtiofs]
0000000000000000 d fuse_dev_operations\t[fuse]
";
    const HOST_6_18: &str = "\
ffffffff8185e1c0 T fuse_simple_background
ffffffff8185eca0 T fuse_request_end
ffffffff8185ee40 t fuse_dev_queue_req
ffffffff81861680 T __fuse_simple_request
";

    #[test]
    fn submission_symbol_differs_by_version() {
        let old = Kallsyms::parse(DEBIAN_6_1);
        let new = Kallsyms::parse(HOST_6_18);
        let candidates = ["__fuse_simple_request", "fuse_simple_request"];
        assert_eq!(
            old.first_of(&candidates),
            Some(("fuse_simple_request", "fuse_simple_request"))
        );
        assert_eq!(
            new.first_of(&candidates),
            Some(("__fuse_simple_request", "__fuse_simple_request"))
        );
        assert_eq!(old.module_of("fuse_request_end"), Some("fuse"));
        assert_eq!(new.module_of("fuse_request_end"), None);
        assert!(new.resolve("queue_request_and_unlock").is_none());
    }

    #[test]
    fn specialised_copies_resolve_fragments_do_not() {
        let k = Kallsyms::parse(DEBIAN_6_1);
        assert_eq!(
            k.resolve("sg_init_fuse_args"),
            Some("sg_init_fuse_args.isra.0")
        );
        assert_eq!(k.resolve("lock_request"), None, ".part is a fragment");
        assert_eq!(k.resolve("virtio_fs_get_tree"), None, ".cold is a fragment");
        assert_eq!(k.resolve("fuse_dev_operations"), None, "data, not code");
        let two =
            Kallsyms::parse("0 t f.constprop.0\n0 t f.constprop.1\n0 t g.constprop.0\n0 t g\n");
        assert_eq!(two.resolve("f"), None, "ambiguous copies");
        assert_eq!(two.resolve("g"), Some("g"), "the plain name wins");
    }

    /// Reading kallsyms costs megabytes: nothing is read until a lookup.
    #[test]
    fn running_kernel_symbols_are_read_at_the_first_lookup() {
        let k = Kallsyms::from_running_kernel();
        assert!(!k.is_loaded());
        let copy = k.clone();
        assert!(!copy.is_loaded());
        // Any kernel has this function; /proc/kallsyms is world-readable.
        assert_eq!(k.resolve("schedule"), Some("schedule"));
        assert!(k.is_loaded());
        assert!(!copy.is_loaded(), "a copy made before reads on its own");
        assert!(Kallsyms::default().is_empty(), "no source, no symbols");
    }
}
