//! The reader API's answers from the gateway's state (`policy/reader.rs` computes them): the
//! [`Source`] over the stores, and [`Gateway::reader_answer`], which counts each call
//! (`rbac_gateway_requests_total{decision="api"}`) and logs a 503, so that the door
//! (`doors/rbac_api.rs`) only writes the answer.

use crate::gateway::state::Gateway;
use crate::policy::outcome::Unavailable;
use crate::policy::principal::Principal;
use crate::policy::reader::{self, Answer, Call, Source, TicketGrant};

impl Gateway {
    /// The answer to a reader API call for the session `token`, counted as `decision="api"`.
    pub async fn reader_answer(
        &self,
        call: &Call,
        method: &str,
        token: Option<&str>,
        request_id: &str,
    ) -> Answer {
        let a = reader::answer(self, call, method, token, request_id).await;
        self.metrics
            .requests
            .with_label_values(&[reader::LABEL])
            .inc();
        if a.status >= 500 {
            tracing::warn!(request_id, status = a.status, "reader API: answering 503");
        }
        a
    }

    fn reader_db_error(&self, what: &str, e: sqlx::Error, u: Unavailable) -> Unavailable {
        self.metrics.db_errors.inc();
        tracing::error!(error = %e, "reader API: cannot read {what}: answering 503");
        u
    }
}

impl Source for Gateway {
    fn ticket_grants_on(&self) -> bool {
        self.ticket_grants
    }

    async fn ticket_grants(&self, admin_id: &str) -> Result<Vec<TicketGrant>, Unavailable> {
        self.metrics.db_queries.inc();
        crate::stores::ticket::active_grants(self.identity.lookups(), admin_id)
            .await
            .map_err(|e| self.reader_db_error("ticket grants", e, Unavailable::Tickets))
    }

    async fn role_granting(
        &self,
        roles: &[String],
        permission: &str,
    ) -> Result<Option<String>, Unavailable> {
        self.metrics.db_queries.inc();
        crate::stores::catalogue::role_granting(self.identity.lookups(), roles, permission)
            .await
            .map_err(|e| self.reader_db_error("role permissions", e, Unavailable::Identity))
    }

    async fn ticket_granting(
        &self,
        principal: &Principal,
        customer: i32,
        permission: &str,
        request_id: &str,
    ) -> Result<Option<String>, Unavailable> {
        let pool = self.identity.lookups();
        let read = |only: Option<Vec<String>>| async move {
            self.metrics.db_queries.inc();
            crate::stores::ticket::grants(pool, &principal.admin_id, customer, only.as_deref())
                .await
                .map_err(|e| self.reader_db_error("ticket grants", e, Unavailable::Tickets))
        };
        let mut tickets: Vec<String> = read(None)
            .await?
            .tickets
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        tickets.sort();
        tickets.dedup();
        // Every ticket re-validated first, as the proxy does (`ticket::ticket_principal`): one the
        // validator cannot answer for is a 503 here too, not an answer from the others.
        if let Some(url) = self.ticket_validation_url.as_deref() {
            tickets = crate::stores::ticket::open_tickets(url, tickets, request_id).await?;
        }
        for t in tickets {
            if read(Some(vec![t.clone()]))
                .await?
                .permissions
                .iter()
                .any(|p| p == permission)
            {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }
}
