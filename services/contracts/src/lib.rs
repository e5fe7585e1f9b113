//! The shop's published language: the values its services exchange (order and
//! customer ids, SKUs, quantities, money, orders) and the events they publish
//! to one another ([`events`]). Application code, not toolkit: a service that
//! joins the shop adds its events here or in a crate of its own.

mod ids;
mod money;
mod order;
mod quantity;
mod sku;

pub mod events;

pub use ids::{CustomerId, OrderId};
pub use money::Money;
pub use order::{NewOrder, NewOrderError, OrderLine, OrderStatus, MAX_ORDER_LINES};
pub use quantity::Quantity;
pub use shared::value::InvalidValue;
pub use sku::Sku;
