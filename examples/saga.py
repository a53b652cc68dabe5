"""The saga path: the payment fails, and the undos run in reverse order."""

from __future__ import annotations

import ironflow
from ironflow import Engine, NonRetryableError, step

undone: list[str] = []


def reserve_flight(trip: str) -> str:
    return f"flight-{trip}"


def reserve_hotel(trip: str) -> str:
    return f"hotel-{trip}"


def take_payment(trip: str) -> str:
    raise NonRetryableError(f"card declined for trip {trip}")


def cancel(what: str) -> str:
    undone.append(what)
    return f"cancelled {what}"


@ironflow.function(id="book-trip")
def book_trip(ctx):
    trip = ctx.event.data["trip"]
    flight = yield step.run("reserve-flight", reserve_flight, trip)
    yield step.compensate("reserve-flight", cancel, flight)
    hotel = yield step.run("reserve-hotel", reserve_hotel, trip)
    yield step.compensate("reserve-hotel", cancel, hotel)
    yield step.run("take-payment", take_payment, trip)
    return "booked"


def main(db: str = ":memory:") -> list[str]:
    engine = Engine(db)
    engine.register(book_trip)
    run_id = engine.start("book-trip", {"trip": "lisbon"})
    try:
        engine.wait(run_id)
    except NonRetryableError as error:
        print(f"run failed as it should: {error}")
    print("undone, in order:", undone)
    return undone


if __name__ == "__main__":
    main()
