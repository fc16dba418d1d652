//! The bank workload's invariants: money is neither made nor lost, and no account goes below
//! zero, as seen by every read of all accounts.

use std::collections::BTreeMap;

/// One read of every account, as a transaction saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankRead {
    pub balances: BTreeMap<String, i64>,
}

/// What a read got wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankViolation {
    WrongTotal { read: usize, total: i64, expected: i64 },
    Negative { read: usize, account: String, balance: i64 },
    MissingAccounts { read: usize, found: usize, expected: usize },
}

/// Checks every read against the expected total and account count.
pub fn check_bank(reads: &[BankRead], accounts: usize, total: i64) -> Vec<BankViolation> {
    let mut violations = Vec::new();
    for (i, read) in reads.iter().enumerate() {
        if read.balances.len() != accounts {
            violations.push(BankViolation::MissingAccounts {
                read: i,
                found: read.balances.len(),
                expected: accounts,
            });
        }
        let sum: i64 = read.balances.values().sum();
        if sum != total {
            violations.push(BankViolation::WrongTotal { read: i, total: sum, expected: total });
        }
        for (account, &balance) in &read.balances {
            if balance < 0 {
                violations.push(BankViolation::Negative {
                    read: i,
                    account: account.clone(),
                    balance,
                });
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(balances: &[(&str, i64)]) -> BankRead {
        BankRead { balances: balances.iter().map(|(a, b)| ((*a).to_string(), *b)).collect() }
    }

    #[test]
    fn a_torn_transfer_and_an_overdraft_are_found() {
        let reads = [
            read(&[("a", 50), ("b", 50)]),
            read(&[("a", 40), ("b", 50)]),
            read(&[("a", -10), ("b", 110)]),
        ];
        let v = check_bank(&reads, 2, 100);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(matches!(v[0], BankViolation::WrongTotal { read: 1, total: 90, .. }));
        assert!(matches!(v[1], BankViolation::Negative { read: 2, .. }));
    }
}
