//! The `[[route]]` rules a test writes into a `routes.toml`, from one builder: each rule's text
//! is exactly what a hand-written one would be (`methods`, `path`, then each field in the order
//! it was given, one a line), so the line and column a refusal names do not depend on who wrote it.
//!
//! ```ignore
//! let text = routes_text(&[
//!     Route::get("/ops").roles(&["console-manager"]).mode("shadow"),
//!     Route::new(&["GET", "POST"], "/console/<page>").access("public"),
//! ]);
//! ```

/// One `[[route]]` rule.
#[derive(Debug, Clone)]
pub struct Route {
    methods: Vec<String>,
    path: String,
    lines: Vec<String>,
}

impl Route {
    /// A rule for `methods` on `path`, with no other field yet.
    pub fn new(methods: &[&str], path: &str) -> Route {
        Route {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.to_string(),
            lines: Vec::new(),
        }
    }

    /// A rule for GET on `path`.
    pub fn get(path: &str) -> Route {
        Route::new(&["GET"], path)
    }

    /// `roles = [...]`: any of these roles.
    pub fn roles(self, roles: &[&str]) -> Route {
        self.line(&format!("roles = {roles:?}"))
    }

    /// `permissions = [...]`: any of these permissions.
    pub fn permissions(self, permissions: &[&str]) -> Route {
        self.line(&format!("permissions = {permissions:?}"))
    }

    /// `access = "..."` (`public`, `machine`, `gone`).
    pub fn access(self, access: &str) -> Route {
        self.string("access", access)
    }

    /// `mode = "..."` (`shadow`, `off`, `enforce`).
    pub fn mode(self, mode: &str) -> Route {
        self.string("mode", mode)
    }

    /// `cluster = "..."`.
    pub fn cluster(self, cluster: &str) -> Route {
        self.string("cluster", cluster)
    }

    /// `customer_param = "..."`: the converter whose value names the customer.
    pub fn customer_param(self, param: &str) -> Route {
        self.string("customer_param", param)
    }

    /// `key = "value"`, any key (one the parser refuses, to test that it does).
    pub fn string(self, key: &str, value: &str) -> Route {
        self.line(&format!("{key} = \"{value}\""))
    }

    /// A line as written, after the fields before it.
    pub fn line(mut self, line: &str) -> Route {
        self.lines.push(line.to_string());
        self
    }

    /// The rule's text: `[[route]]`, then one line per field, each ending in a line break.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "[[route]]\nmethods = {:?}\npath = \"{}\"\n",
            self.methods, self.path
        );
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// The rules' text, a blank line between two rules.
pub fn routes_text(routes: &[Route]) -> String {
    routes
        .iter()
        .map(Route::to_toml)
        .collect::<Vec<_>>()
        .join("\n")
}
