//! The measures of a rollup row (`report_facts`): one list, from which the struct, its
//! arithmetic and the SQL that upserts and sums it are generated, so a new measure is one
//! line here plus a column in a migration.

/// Declares the measures. `sum` columns add up; `max` columns keep the greatest value.
macro_rules! measures {
    ($( $kind:ident $name:ident : $doc:literal ),* $(,)?) => {
        /// One rollup row's figures (durations in milliseconds).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct Measures {
            $( #[doc = $doc] pub $name: i64, )*
        }

        impl Measures {
            /// Column names, in declaration order.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($name)),*];
            /// Whether each column keeps the maximum (true) or adds up (false).
            pub const IS_MAX: &'static [bool] = &[$(measures!(@ismax $kind)),*];

            /// Adds another row's figures (max columns keep the greatest).
            pub fn add(&mut self, o: &Measures) {
                $( measures!(@add $kind self.$name, o.$name); )*
            }

            /// The values in column order.
            pub fn values(&self) -> Vec<i64> {
                vec![$(self.$name),*]
            }

            /// From values in column order (missing ones are 0).
            pub fn from_values(v: &[i64]) -> Measures {
                let mut it = v.iter().copied();
                Measures { $( $name: it.next().unwrap_or(0), )* }
            }

            /// Whether every figure is zero.
            pub fn is_zero(&self) -> bool {
                $( self.$name == 0 && )* true
            }
        }
    };
    (@ismax sum) => { false };
    (@ismax max) => { true };
    (@add sum $a:expr, $b:expr) => { $a += $b };
    (@add max $a:expr, $b:expr) => { $a = $a.max($b) };
}

measures! {
    sum offered: "Contacts that entered the queue to wait for an agent.",
    sum answered: "Contacts answered (first acceptance by an agent).",
    sum answered_in_sl: "Answered within the queue's service-level threshold.",
    sum wait_answered_ms: "Total queue time of answered contacts (ASA numerator).",
    sum abandoned: "Contacts that left while waiting, after the short-abandon threshold.",
    sum abandoned_short: "Contacts that left while waiting, before the short-abandon threshold.",
    sum abandoned_in_sl: "Abandoned (long or short) within the service-level threshold.",
    sum abandon_wait_ms: "Total queue time of (long) abandoned contacts.",
    max max_wait_ms: "Longest queue time of an answered or abandoned contact.",
    sum voicemail: "Contacts that ended in voicemail.",
    sum overflowed: "Contacts that overflowed out of the queue.",
    sum callback: "Callbacks requested.",
    sum transferred: "Transfers out (by the agent who held the contact).",
    sum transferred_in: "Transfers into the queue or to the agent.",
    sum reopened: "Contacts that reopened a closed conversation.",
    sum offers: "Offers made to the agent (rings).",
    sum ring_no_answer: "Offers that rang out unanswered.",
    sum declined: "Offers the agent declined.",
    sum handled: "Contacts whose handling by the agent ended (closed or transferred on).",
    sum talk_ms: "Talk (or work) time: accepted to wrap-up, hold excluded.",
    sum hold_ms: "Hold time.",
    sum wrap_ms: "Wrap-up time: wrap-up to close.",
    sum holds: "Times put on hold.",
    sum inbound_msgs: "Customer messages.",
    sum replies: "Agent replies to the customer.",
    sum notes: "Internal notes (never responses).",
    sum first_responses: "Async contacts that got their first reply.",
    sum first_response_ms: "Total first-response time.",
    sum resolved: "Async contacts closed.",
    sum resolution_ms: "Total resolution time (created to closed).",
    sum disp_complaint: "Closed as complaint.",
    sum disp_inquiry: "Closed as inquiry.",
    sum disp_suggestion: "Closed as suggestion.",
    sum disp_other: "Closed as other.",
    sum available_ms: "Time available.",
    sum away_ms: "Time away.",
    sum busy_ms: "Time busy.",
    sum wrap_up_state_ms: "Time in wrap-up presence.",
    sum handling_ms: "Time holding at least one contact.",
    sum idle_ms: "Time available holding no contact.",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_and_keeps_the_max() {
        let mut a = Measures { offered: 2, max_wait_ms: 10, ..Default::default() };
        a.add(&Measures { offered: 3, max_wait_ms: 7, ..Default::default() });
        assert_eq!((a.offered, a.max_wait_ms), (5, 10));
        assert_eq!(Measures::from_values(&a.values()), a);
        assert_eq!(Measures::COLUMNS.len(), Measures::IS_MAX.len());
        assert!(Measures::default().is_zero() && !a.is_zero());
    }
}
