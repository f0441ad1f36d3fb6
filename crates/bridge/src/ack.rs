//! Acknowledgements: a QoS 1 PUBLISH is acknowledged only after what it
//! carries is stored (PostgreSQL or the spool), in the order the broker
//! sent it. The source takes an [`AckToken`] from each PUBLISH; the
//! reliable sink sends it back through the [`Acker`] once the batch holding
//! it is stored.

use rumqttc::{AsyncClient, ClientError, Publish, QoS};

/// What is needed to acknowledge one QoS 1 PUBLISH later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub pkid: u16,
}

/// Sends PUBACKs for stored messages.
#[derive(Clone)]
pub struct Acker {
    client: AsyncClient,
}

impl Acker {
    pub fn new(client: AsyncClient) -> Self {
        Acker { client }
    }

    pub async fn ack(&self, t: AckToken) -> Result<(), ClientError> {
        let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
        p.pkid = t.pkid;
        self.client.ack(&p).await
    }
}
