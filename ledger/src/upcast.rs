//! Old payload versions and the upcasters that turn them into the current ones.
//!
//! bincode is not self-describing: a payload written by an older shape cannot be read with the
//! newer type. So an old shape stays here, compilable, for as long as bytes of it may exist
//! (forever, in a ledger), with a conversion into the current type. Golden fixtures of every
//! version (`ledger/golden/`) prove each one still decodes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, from_bytes};
use crate::events::{
    CommandAccepted, CommandRejected, CostMethod, DailyCapacitySet, Disposition, Event, EventType,
    ExceptionKind, ExceptionRule, ExceptionRuleSet, ItemDefined, LegalEntityDefined, LineQty,
    PackSize, ReturnAuthorised, ReturnDispositioned, ReturnReceived, Severity, Tracking,
};
use crate::values::{
    ActorId, Currency, EntityId, LocationId, OrderId, Qty, ReturnId, Sku, SupplierId, UnitName,
};

/// `item.defined` / `item.changed` version 1: before items chose a cost method and whether
/// on-hand may go negative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ItemDefinedV1 {
    pub sku: Sku,
    pub description: String,
    pub base_unit: UnitName,
    pub pack_sizes: Vec<PackSize>,
    pub tracking: Tracking,
    pub reorder_point: Qty,
    pub safety_stock: Qty,
    pub lead_time_days: u32,
    pub min_order_qty: Qty,
    pub suppliers: Vec<SupplierId>,
}

impl From<ItemDefinedV1> for ItemDefined {
    /// Items defined before v2 were valued FIFO and never allowed negative stock.
    fn from(v1: ItemDefinedV1) -> ItemDefined {
        ItemDefined {
            sku: v1.sku,
            description: v1.description,
            base_unit: v1.base_unit,
            pack_sizes: v1.pack_sizes,
            tracking: v1.tracking,
            reorder_point: v1.reorder_point,
            safety_stock: v1.safety_stock,
            lead_time_days: v1.lead_time_days,
            min_order_qty: v1.min_order_qty,
            suppliers: v1.suppliers,
            cost_method: CostMethod::Fifo,
            allow_negative: false,
        }
    }
}

/// `location.daily_capacity_set` version 1: units only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DailyCapacitySetV1 {
    pub location: LocationId,
    pub units: Option<u32>,
}

impl From<DailyCapacitySetV1> for DailyCapacitySet {
    /// Capacities set before version 2 limit no orders.
    fn from(v1: DailyCapacitySetV1) -> DailyCapacitySet {
        DailyCapacitySet {
            location: v1.location,
            units: v1.units,
            orders: None,
        }
    }
}

/// `stock.return_received` version 1: before returns named their lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReturnReceivedV1 {
    pub sku: Sku,
    pub return_id: ReturnId,
    pub order: OrderId,
    pub line: u32,
    pub location: LocationId,
    pub qty: Qty,
}

impl From<ReturnReceivedV1> for ReturnReceived {
    /// Returns received before version 2 name no lot.
    fn from(v1: ReturnReceivedV1) -> ReturnReceived {
        ReturnReceived {
            sku: v1.sku,
            return_id: v1.return_id,
            order: v1.order,
            line: v1.line,
            location: v1.location,
            qty: v1.qty,
            lot: None,
        }
    }
}

/// `stock.return_dispositioned` version 1: before returns named their lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReturnDispositionedV1 {
    pub sku: Sku,
    pub return_id: ReturnId,
    pub location: LocationId,
    pub qty: Qty,
    pub disposition: Disposition,
}

impl From<ReturnDispositionedV1> for ReturnDispositioned {
    /// Returns dispositioned before version 2 name no lot.
    fn from(v1: ReturnDispositionedV1) -> ReturnDispositioned {
        ReturnDispositioned {
            sku: v1.sku,
            return_id: v1.return_id,
            location: v1.location,
            qty: v1.qty,
            disposition: v1.disposition,
            lot: None,
        }
    }
}

/// `command.rejected` version 1: before rejections named what the command addressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandRejectedV1 {
    pub command_type: String,
    pub body_sha256: [u8; 32],
    pub code: String,
    pub message: String,
}

impl From<CommandRejectedV1> for CommandRejectedV2 {
    /// The targets of a v1 rejection are unknown.
    fn from(v1: CommandRejectedV1) -> CommandRejectedV2 {
        CommandRejectedV2 {
            command_type: v1.command_type,
            body_sha256: v1.body_sha256,
            code: v1.code,
            message: v1.message,
            targets: Vec::new(),
        }
    }
}

/// `command.rejected` version 2: before outcomes recorded the end user an integration acted
/// for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandRejectedV2 {
    pub command_type: String,
    pub body_sha256: [u8; 32],
    pub code: String,
    pub message: String,
    pub targets: Vec<String>,
}

impl From<CommandRejectedV2> for CommandRejected {
    /// No end user was recorded before v3.
    fn from(v2: CommandRejectedV2) -> CommandRejected {
        CommandRejected {
            command_type: v2.command_type,
            body_sha256: v2.body_sha256,
            code: v2.code,
            message: v2.message,
            targets: v2.targets,
            on_behalf_of: None,
        }
    }
}

impl From<CommandRejectedV1> for CommandRejected {
    fn from(v1: CommandRejectedV1) -> CommandRejected {
        CommandRejectedV2::from(v1).into()
    }
}

/// `command.accepted` version 1: before outcomes recorded the end user an integration acted
/// for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandAcceptedV1 {
    pub command_type: String,
    pub body_sha256: [u8; 32],
    pub event_count: u32,
}

impl From<CommandAcceptedV1> for CommandAcceptedV2 {
    /// No end user was recorded before v2.
    fn from(v1: CommandAcceptedV1) -> CommandAcceptedV2 {
        CommandAcceptedV2 {
            command_type: v1.command_type,
            body_sha256: v1.body_sha256,
            event_count: v1.event_count,
            on_behalf_of: None,
        }
    }
}

impl From<CommandAcceptedV1> for CommandAccepted {
    fn from(v1: CommandAcceptedV1) -> CommandAccepted {
        CommandAcceptedV2::from(v1).into()
    }
}

/// `command.accepted` version 2: before outcomes recorded the maker-checker threshold in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandAcceptedV2 {
    pub command_type: String,
    pub body_sha256: [u8; 32],
    pub event_count: u32,
    pub on_behalf_of: Option<ActorId>,
}

impl From<CommandAcceptedV2> for CommandAccepted {
    /// No threshold applied before v3 (thresholds did not exist).
    fn from(v2: CommandAcceptedV2) -> CommandAccepted {
        CommandAccepted {
            command_type: v2.command_type,
            body_sha256: v2.body_sha256,
            event_count: v2.event_count,
            on_behalf_of: v2.on_behalf_of,
            threshold: None,
        }
    }
}

/// `legal_entity.defined` version 1: before entities had a country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LegalEntityDefinedV1 {
    pub entity: EntityId,
    pub name: String,
    pub currency: Currency,
}

impl From<LegalEntityDefinedV1> for LegalEntityDefined {
    /// The country of a v1 entity is unknown (empty).
    fn from(v1: LegalEntityDefinedV1) -> LegalEntityDefined {
        LegalEntityDefined {
            entity: v1.entity,
            name: v1.name,
            currency: v1.currency,
            country: String::new(),
        }
    }
}

/// `order.return_authorised` version 1: before returns carried a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReturnAuthorisedV1 {
    pub order: OrderId,
    pub return_id: ReturnId,
    pub lines: Vec<LineQty>,
}

impl From<ReturnAuthorisedV1> for ReturnAuthorised {
    /// A v1 return's reason was not recorded: `None`, no note.
    fn from(v1: ReturnAuthorisedV1) -> ReturnAuthorised {
        ReturnAuthorised {
            order: v1.order,
            return_id: v1.return_id,
            lines: v1.lines,
            reason: None,
            note: String::new(),
        }
    }
}

/// `exception.rule_set` version 1: before a rule could block fulfilment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExceptionRuleSetV1 {
    pub kind: ExceptionKind,
    pub rule: Option<ExceptionRuleV1>,
}

/// The rule inside `exception.rule_set` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExceptionRuleV1 {
    pub threshold: u32,
    pub severity: Severity,
}

impl From<ExceptionRuleSetV1> for ExceptionRuleSet {
    /// A v1 rule never blocked.
    fn from(v1: ExceptionRuleSetV1) -> ExceptionRuleSet {
        ExceptionRuleSet {
            kind: v1.kind,
            rule: v1.rule.map(|r| ExceptionRule {
                threshold: r.threshold,
                severity: r.severity,
                blocks: false,
            }),
        }
    }
}

/// Every (type, version) older than current that can still be read.
pub const OLD_VERSIONS: &[(EventType, u16)] = &[
    (EventType::ItemDefined, 1),
    (EventType::ItemChanged, 1),
    (EventType::CommandRejected, 1),
    (EventType::CommandRejected, 2),
    (EventType::CommandAccepted, 1),
    (EventType::CommandAccepted, 2),
    (EventType::LegalEntityDefined, 1),
    (EventType::ReturnAuthorised, 1),
    (EventType::ExceptionRuleSet, 1),
    (EventType::ReturnReceived, 1),
    (EventType::ReturnDispositioned, 1),
    (EventType::DailyCapacitySet, 1),
];

/// Decodes a payload written at an older `version` of `event_type` and upcasts it.
pub(crate) fn decode_old(
    event_type: EventType,
    version: u16,
    bytes: &[u8],
) -> Result<Event, CodecError> {
    match (event_type, version) {
        (EventType::ItemDefined, 1) => Ok(Event::ItemDefined(
            from_bytes::<ItemDefinedV1>(bytes)?.into(),
        )),
        (EventType::ItemChanged, 1) => Ok(Event::ItemChanged(
            from_bytes::<ItemDefinedV1>(bytes)?.into(),
        )),
        (EventType::CommandRejected, 1) => Ok(Event::CommandRejected(
            from_bytes::<CommandRejectedV1>(bytes)?.into(),
        )),
        (EventType::CommandRejected, 2) => Ok(Event::CommandRejected(
            from_bytes::<CommandRejectedV2>(bytes)?.into(),
        )),
        (EventType::CommandAccepted, 1) => Ok(Event::CommandAccepted(
            from_bytes::<CommandAcceptedV1>(bytes)?.into(),
        )),
        (EventType::CommandAccepted, 2) => Ok(Event::CommandAccepted(
            from_bytes::<CommandAcceptedV2>(bytes)?.into(),
        )),
        (EventType::LegalEntityDefined, 1) => Ok(Event::LegalEntityDefined(
            from_bytes::<LegalEntityDefinedV1>(bytes)?.into(),
        )),
        (EventType::ReturnAuthorised, 1) => Ok(Event::ReturnAuthorised(
            from_bytes::<ReturnAuthorisedV1>(bytes)?.into(),
        )),
        (EventType::ExceptionRuleSet, 1) => Ok(Event::ExceptionRuleSet(
            from_bytes::<ExceptionRuleSetV1>(bytes)?.into(),
        )),
        (EventType::ReturnReceived, 1) => Ok(Event::ReturnReceived(
            from_bytes::<ReturnReceivedV1>(bytes)?.into(),
        )),
        (EventType::ReturnDispositioned, 1) => Ok(Event::ReturnDispositioned(
            from_bytes::<ReturnDispositionedV1>(bytes)?.into(),
        )),
        (EventType::DailyCapacitySet, 1) => Ok(Event::DailyCapacitySet(
            from_bytes::<DailyCapacitySetV1>(bytes)?.into(),
        )),
        _ => Err(CodecError::UnknownVersion {
            event_type: event_type.name(),
            version,
        }),
    }
}
