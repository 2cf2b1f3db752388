//! The exchange demo (README "Exchange demo", `scripts/demo-exchange.sh`) over a real node: a
//! token and an asset (two `examples/token.wat` processes) and an order book
//! (`examples/orderbook.wat`). Deposits reach the order book only as Credit-Notices the node
//! pushes from the token and asset processes; the order book settles only through Transfers in
//! its outbox, which the node signs and schedules on them. No process reads another's state.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use ferrobeam::message::{Id, Message, Wallet};
use serde_json::Value as Json;

const TOKEN: &str = include_str!("../../examples/token.wat");
const ORDERBOOK: &str = include_str!("../../examples/orderbook.wat");

/// Makes every message unique: Ed25519 signatures are deterministic, so two identical messages
/// from one wallet would be one message (the second acked as a duplicate of the first).
static ANCHOR: AtomicU64 = AtomicU64::new(0);

/// The three processes of one exchange on a node, and its two users.
struct Exchange {
    base: String,
    token: Id,
    asset: Id,
    book: Id,
    seller: Wallet,
    buyer: Wallet,
}

impl Exchange {
    /// The buyer owns 100 tokens, the seller 5 asset units; the order book is spawned last, with
    /// the ids of the other two as its `token` and `asset` tags.
    fn open(base: &str) -> Self {
        let (operator, seller, buyer) = (wallet(30), wallet(31), wallet(32));
        let token = spawn_wat(base, &buyer, TOKEN, &[("supply", "100"), ("name", "token")]);
        let asset = spawn_wat(base, &seller, TOKEN, &[("supply", "5"), ("name", "asset")]);
        let book = spawn_wat(
            base,
            &operator,
            ORDERBOOK,
            &[("token", &token.to_string()), ("asset", &asset.to_string())],
        );
        assert_eq!(result(base, &book, 0)["error"], Json::Null);
        Self {
            base: base.to_owned(),
            token,
            asset,
            book,
            seller,
            buyer,
        }
    }

    /// Transfers `quantity` of `ledger` (the token or the asset) from `who` to the order book and
    /// returns the result of the Credit-Notice the node pushed to the order book.
    fn deposit(&self, who: &Wallet, ledger: &Id, quantity: u64) -> Json {
        let book = self.book.to_string();
        let quantity = quantity.to_string();
        let transfer = act(
            &self.base,
            who,
            ledger,
            &[
                ("action", "Transfer"),
                ("recipient", &book),
                ("quantity", &quantity),
            ],
        );
        assert_eq!(transfer["error"], Json::Null, "{transfer}");
        let pushed = &transfer["pushed"][0];
        assert_eq!(pushed["target"], book, "{transfer}");
        result(&self.base, &self.book, pushed["slot"].as_u64().unwrap())
    }

    /// `account`'s balance in `ledger`, asked with a Balance message.
    fn balance(&self, ledger: &Id, account: &str) -> u64 {
        let record = act(
            &self.base,
            &self.buyer,
            ledger,
            &[("action", "Balance"), ("recipient", account)],
        );
        record["output"].as_str().unwrap().parse().unwrap()
    }

    /// (token, asset) balances of the seller, the buyer and the order book.
    fn balances(&self) -> [(u64, u64); 3] {
        let accounts = [
            self.seller.address().to_string(),
            self.buyer.address().to_string(),
            self.book.to_string(),
        ];
        accounts.map(|a| (self.balance(&self.token, &a), self.balance(&self.asset, &a)))
    }

    /// `who`'s (token, asset) escrow in the order book.
    fn escrow(&self, who: &Wallet) -> (u64, u64) {
        let record = act(&self.base, who, &self.book, &[("action", "Escrow")]);
        let escrow: Json = serde_json::from_str(record["output"].as_str().unwrap()).unwrap();
        (
            escrow["token"].as_u64().unwrap(),
            escrow["asset"].as_u64().unwrap(),
        )
    }
}

/// Sends a signed message with `fields` to `process` and returns its slot's result record.
fn act(base: &str, wallet: &Wallet, process: &Id, fields: &[(&str, &str)]) -> Json {
    let mut message = Message::new()
        .with("target", process.to_string())
        .with("anchor", ANCHOR.fetch_add(1, Ordering::Relaxed).to_string());
    for (k, v) in fields {
        message.set(k, *v).unwrap();
    }
    let signed = wallet.sign(message, &mut rand::rngs::OsRng);
    let (status, ack) = post_message(base, &format!("/{process}/schedule"), &signed);
    assert_eq!(status, 201, "{ack}");
    result(base, process, ack["slot"].as_u64().unwrap())
}

/// The result record of a slot (the node waits for it to be computed).
fn result(base: &str, process: &Id, slot: u64) -> Json {
    let (status, body) = get(base, &format!("/{process}/compute?slot={slot}")).unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn error(record: &Json) -> &str {
    record["error"].as_str().unwrap_or("")
}

#[test]
fn a_market_order_settles_through_pushed_transfers() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let ex = Exchange::open(&node.url());
    let (seller, buyer) = (
        ex.seller.address().to_string(),
        ex.buyer.address().to_string(),
    );

    // The seller escrows one asset unit and offers it for 10 tokens.
    let notice = ex.deposit(&ex.seller, &ex.asset, 1);
    assert_eq!(notice["output"], "1", "{notice}");
    let sell = act(
        &ex.base,
        &ex.seller,
        &ex.book,
        &[("action", "Sell"), ("quantity", "1"), ("price", "10")],
    );
    assert_eq!(sell["error"], Json::Null, "{sell}");
    assert_eq!(
        sell["output"],
        sell["slot"].to_string(),
        "the order id is its slot"
    );

    // The buyer escrows 10 tokens and buys one unit at market.
    let notice = ex.deposit(&ex.buyer, &ex.token, 10);
    assert_eq!(notice["output"], "10", "{notice}");
    let buy = act(
        &ex.base,
        &ex.buyer,
        &ex.book,
        &[("action", "Buy"), ("quantity", "1")],
    );
    assert_eq!(buy["error"], Json::Null, "{buy}");
    assert_eq!(buy["output"], r#"{"filled":1,"cost":10}"#);

    // Settlement is two outbox messages, both pushed: the unit to the buyer, the tokens to the
    // seller.
    let messages = buy["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{buy}");
    assert_eq!(messages[0]["target"], ex.asset.to_string());
    assert_eq!(messages[0]["recipient"], buyer);
    assert_eq!(messages[0]["quantity"], "1");
    assert_eq!(messages[1]["target"], ex.token.to_string());
    assert_eq!(messages[1]["recipient"], seller);
    assert_eq!(messages[1]["quantity"], "10");
    for (pushed, ledger) in buy["pushed"]
        .as_array()
        .unwrap()
        .iter()
        .zip([ex.asset, ex.token])
    {
        assert_eq!(pushed["target"], ledger.to_string(), "{buy}");
        let transfer = result(&ex.base, &ledger, pushed["slot"].as_u64().unwrap());
        assert_eq!(transfer["error"], Json::Null, "{transfer}");
        // The pushed message is signed by the node and names the order book as its source.
        let id = pushed["id"].as_str().unwrap();
        let (status, message) = get(&ex.base, &format!("/~message@1.0/{id}")).unwrap();
        assert_eq!(status, 200, "{message}");
        assert_eq!(message["from-process"], ex.book.to_string(), "{message}");
        assert_eq!(message["from-slot"], buy["slot"], "{message}");
    }

    // (token, asset) of seller, buyer, order book.
    assert_eq!(ex.balances(), [(10, 4), (90, 1), (0, 0)]);
    assert_eq!(ex.escrow(&ex.seller), (0, 0));
    assert_eq!(ex.escrow(&ex.buyer), (0, 0));

    // `ferrobeam result` draws the settlement: the Buy → two Transfers → Credit-Notices to
    // wallets, which are not processes and so are not pushed.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
        .args(["result", "--json", "--node", &ex.base])
        .args(["--process", &ex.book.to_string()])
        .args(["--slot", &buy["slot"].to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: Json = serde_json::from_slice(&output.stdout).unwrap();
    let tree = record["tree"].as_array().unwrap();
    assert_eq!(tree.len(), 2, "{record}");
    assert_eq!(tree[0]["target"], ex.asset.to_string());
    assert_eq!(tree[1]["target"], ex.token.to_string());
    for transfer in tree {
        assert_eq!(transfer["error"], Json::Null, "{record}");
        assert_eq!(
            transfer["tree"][0]["skipped"], "no process here and no route to it",
            "{record}"
        );
    }

    // Anyone can recompute all three from their schedules, node-signed pushes included.
    for process in [ex.token, ex.asset, ex.book] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferrobeam"))
            .args(["audit", "--json", "--node", &ex.base])
            .args(["--process", &process.to_string()])
            .output()
            .unwrap();
        let report: Json = serde_json::from_slice(&output.stdout).unwrap_or_default();
        assert!(output.status.success(), "{report}");
        assert_eq!(report["ok"], true, "{report}");
    }
}

#[test]
fn bad_orders_and_forged_notices_change_nothing() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let ex = Exchange::open(&node.url());
    let buyer = ex.buyer.address().to_string();
    let book = |who: &Wallet, fields: &[(&str, &str)]| act(&ex.base, who, &ex.book, fields);

    // Nothing to buy yet, and nothing escrowed to sell.
    let buy = book(&ex.buyer, &[("action", "Buy"), ("quantity", "1")]);
    assert_eq!(error(&buy), "no matching sell order");
    assert_eq!(buy["messages"], Json::Array(vec![]), "no outbox on failure");
    let sell = [("action", "Sell"), ("quantity", "1"), ("price", "10")];
    assert_eq!(error(&book(&ex.seller, &sell)), "insufficient asset escrow");

    // A user cannot forge a deposit: `from` of a Credit-Notice must be the token or asset process.
    let forged = book(
        &ex.buyer,
        &[
            ("action", "Credit-Notice"),
            ("sender", &buyer),
            ("quantity", "1000"),
        ],
    );
    assert_eq!(
        error(&forged),
        "credit-notice not from the token or asset process"
    );
    // Nor can another process: a real Credit-Notice, pushed by a token the book does not trade.
    let rogue = spawn_wat(
        &ex.base,
        &ex.buyer,
        TOKEN,
        &[("supply", "1000"), ("name", "rogue")],
    );
    let notice = ex.deposit(&ex.buyer, &rogue, 1000);
    assert_eq!(
        error(&notice),
        "credit-notice not from the token or asset process"
    );
    assert_eq!(ex.escrow(&ex.buyer), (0, 0));

    // Escrow covers only what was deposited.
    ex.deposit(&ex.seller, &ex.asset, 1);
    let too_many = [("action", "Sell"), ("quantity", "2"), ("price", "10")];
    assert_eq!(
        error(&book(&ex.seller, &too_many)),
        "insufficient asset escrow"
    );
    let order = book(&ex.seller, &sell);
    assert_eq!(order["error"], Json::Null, "{order}");
    let order_id = order["output"].as_str().unwrap().to_owned();
    assert_eq!(
        ex.escrow(&ex.seller),
        (0, 0),
        "the unit is locked in the order"
    );

    ex.deposit(&ex.buyer, &ex.token, 5);
    let buy_one = [("action", "Buy"), ("quantity", "1")];
    assert_eq!(
        error(&book(&ex.buyer, &buy_one)),
        "insufficient token escrow"
    );
    ex.deposit(&ex.buyer, &ex.token, 15);
    let buy_two = [("action", "Buy"), ("quantity", "2")];
    assert_eq!(
        error(&book(&ex.buyer, &buy_two)),
        "not enough sell orders to fill"
    );
    let cancel = [("action", "Cancel"), ("order", order_id.as_str())];
    assert_eq!(error(&book(&ex.buyer, &cancel)), "not your order");
    assert_eq!(
        error(&book(&ex.seller, &[("action", "Swap")])),
        "unknown action"
    );
    for bad in ["0", "-1", "1x", "1000000001"] {
        let buy = book(&ex.buyer, &[("action", "Buy"), ("quantity", bad)]);
        assert_eq!(error(&buy), "invalid quantity", "quantity {bad}");
    }

    // None of that moved anything: the buyer's 20 tokens and the seller's order are intact.
    assert_eq!(ex.escrow(&ex.buyer), (20, 0));
    assert_eq!(ex.balances(), [(0, 4), (80, 0), (20, 1)]);

    // Both leave: the seller cancels, and each withdraws through a pushed Transfer.
    let cancelled = book(&ex.seller, &cancel);
    assert_eq!(cancelled["output"], "1", "{cancelled}");
    assert_eq!(error(&book(&ex.seller, &cancel)), "no such order");
    let overdraw = [
        ("action", "Withdraw"),
        ("escrow", "token"),
        ("quantity", "21"),
    ];
    assert_eq!(
        error(&book(&ex.buyer, &overdraw)),
        "insufficient token escrow"
    );
    for (who, escrow, quantity) in [(&ex.buyer, "token", "20"), (&ex.seller, "asset", "1")] {
        let withdraw = book(
            who,
            &[
                ("action", "Withdraw"),
                ("escrow", escrow),
                ("quantity", quantity),
            ],
        );
        assert_eq!(withdraw["output"], "0", "{withdraw}");
        let pushed = &withdraw["pushed"][0];
        let ledger: Id = pushed["target"].as_str().unwrap().parse().unwrap();
        let transfer = result(&ex.base, &ledger, pushed["slot"].as_u64().unwrap());
        assert_eq!(transfer["error"], Json::Null, "{transfer}");
    }
    assert_eq!(ex.balances(), [(0, 5), (100, 0), (0, 0)]);
}

#[test]
fn market_orders_take_the_lowest_price_first() {
    let dir = tempdir();
    let node = InProcessNode::start(config(dir.path()));
    let ex = Exchange::open(&node.url());
    // A second seller, funded by the first with 2 asset units.
    let other = wallet(33);
    let other_address = other.address().to_string();
    let gift = act(
        &ex.base,
        &ex.seller,
        &ex.asset,
        &[
            ("action", "Transfer"),
            ("recipient", &other_address),
            ("quantity", "2"),
        ],
    );
    assert_eq!(gift["error"], Json::Null, "{gift}");
    ex.deposit(&ex.seller, &ex.asset, 2);
    ex.deposit(&other, &ex.asset, 2);
    let sell = |who: &Wallet, quantity: &str, price: &str| {
        let order = act(
            &ex.base,
            who,
            &ex.book,
            &[("action", "Sell"), ("quantity", quantity), ("price", price)],
        );
        assert_eq!(order["error"], Json::Null, "{order}");
    };
    sell(&ex.seller, "2", "12");
    sell(&other, "1", "10");
    sell(&other, "1", "12"); // same price as the seller's order, but later

    ex.deposit(&ex.buyer, &ex.token, 50);
    let buy = act(
        &ex.base,
        &ex.buyer,
        &ex.book,
        &[("action", "Buy"), ("quantity", "2")],
    );
    // One unit at 10 from `other`, then one at 12 from the seller (older than other's at 12).
    assert_eq!(buy["output"], r#"{"filled":2,"cost":22}"#, "{buy}");
    let paid: Vec<(&str, &str)> = buy["messages"].as_array().unwrap()[1..]
        .iter()
        .map(|m| {
            (
                m["recipient"].as_str().unwrap(),
                m["quantity"].as_str().unwrap(),
            )
        })
        .collect();
    let seller = ex.seller.address().to_string();
    assert_eq!(
        paid,
        [(other_address.as_str(), "10"), (seller.as_str(), "12")]
    );

    // The rest of the book: the seller's remaining unit at 12, then other's at 12.
    let buy = act(
        &ex.base,
        &ex.buyer,
        &ex.book,
        &[("action", "Buy"), ("quantity", "2")],
    );
    assert_eq!(buy["output"], r#"{"filled":2,"cost":24}"#, "{buy}");
    let empty = act(
        &ex.base,
        &ex.buyer,
        &ex.book,
        &[("action", "Buy"), ("quantity", "1")],
    );
    assert_eq!(error(&empty), "no matching sell order");
    assert_eq!(ex.escrow(&ex.buyer), (50 - 22 - 24, 0));
    // (token, asset) of seller, buyer, order book; and the other seller's.
    assert_eq!(ex.balances(), [(24, 1), (50, 4), (4, 0)]);
    assert_eq!(ex.balance(&ex.token, &other_address), 22);
    assert_eq!(ex.balance(&ex.asset, &other_address), 0);
}
