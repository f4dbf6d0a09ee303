//! Mappings for unit tests, rule by rule: a test names the rules it needs, and the text is read
//! by the real loader ([`Mapping::from_str`]), so what a test decides on is what `routes.toml`
//! would give.
//!
//! ```text
//! rules().route("GET", "/a").roles(&["reader"]).mode("shadow").mapping()
//! ```

use std::path::Path;

use super::Mapping;

/// A mapping's text, table by table; each setter writes one line into the table begun last.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    text: String,
}

/// An empty mapping, to add rules and clusters to.
pub fn rules() -> Rules {
    Rules::default()
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Rules {
    /// Begins a rule: `methods` space-separated (`"GET POST"`), then its settings.
    pub fn route(mut self, methods: &str, path: &str) -> Self {
        let methods: Vec<&str> = methods.split_whitespace().collect();
        self.text.push_str(&format!(
            "[[route]]\nmethods = {}\npath = {path:?}\n",
            list(&methods)
        ));
        self
    }

    /// Begins the declaration of a cluster (`[cluster.NAME]`), then its settings.
    pub fn declare(mut self, cluster: &str) -> Self {
        self.text.push_str(&format!("[cluster.{cluster}]\n"));
        self
    }

    fn set(mut self, key: &str, value: String) -> Self {
        self.text.push_str(&format!("{key} = {value}\n"));
        self
    }

    pub fn roles(self, roles: &[&str]) -> Self {
        self.set("roles", list(roles))
    }

    pub fn permissions(self, permissions: &[&str]) -> Self {
        self.set("permissions", list(permissions))
    }

    /// `enforce`, `shadow` or `off`, of a rule or a cluster.
    pub fn mode(self, mode: &str) -> Self {
        self.set("mode", format!("{mode:?}"))
    }

    /// `public`, `machine`, `gone`, ... (a rule without it is protected).
    pub fn access(self, access: &str) -> Self {
        self.set("access", format!("{access:?}"))
    }

    pub fn customer_param(self, param: &str) -> Self {
        self.set("customer_param", format!("{param:?}"))
    }

    /// The cluster a rule belongs to.
    pub fn cluster(self, cluster: &str) -> Self {
        self.set("cluster", format!("{cluster:?}"))
    }

    /// A cluster's blockers.
    pub fn blocked_by(self, blockers: &[&str]) -> Self {
        self.set("blocked_by", list(blockers))
    }

    /// The text, as `routes.toml` would spell it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The mapping, loaded as `t.toml`.
    pub fn mapping(&self) -> Mapping {
        self.mapping_named("t.toml")
    }

    /// The mapping, loaded as the file `name`; panics, naming the text, when it does not load.
    pub fn mapping_named(&self, name: &str) -> Mapping {
        Mapping::from_str(name, Path::new(name), &self.text)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.text))
    }
}
