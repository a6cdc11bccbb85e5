#!/usr/bin/env python3
"""Generates audience.csv for the spring-sale example: 10,000 recipients plus
a few deliberately bad rows. Deterministic (fixed seed); run it again to
regenerate the same file."""

import csv
import random

random.seed(2027)

COUNTRIES = {
    "DE": ["Europe/Berlin"],
    "FR": ["Europe/Paris"],
    "US": ["America/New_York", "America/Chicago", "America/Los_Angeles"],
    "GB": ["Europe/London"],
    "IN": ["Asia/Kolkata"],
    "NZ": ["Pacific/Auckland"],
    "BR": ["America/Sao_Paulo"],
    "JP": ["Asia/Tokyo"],
}
FIRST = ["Ana", "Ben", "Chloé", "Dev", "Emil", "Fatima", "Gita", "Hugo", "Ines", "Jun", "Kai", "Lena", "Mateo", "Noor", "Olu", "Priya"]
LAST = ["Meyer", "Dubois", "Smith", "Patel", "Tanaka", "Silva", "Okafor", "Novak", "García", "Nguyen"]

rows = []
for i in range(1, 10001):
    country = random.choice(list(COUNTRIES))
    orders = random.choices([0, 1, 2, 3, 5, 8, 13], weights=[30, 20, 15, 12, 10, 8, 5])[0]
    ltv = round(orders * random.uniform(15, 180), 2)
    first = random.choice(FIRST) if random.random() > 0.08 else ""  # some have no first name
    rows.append({
        "id": f"c{i:05d}",
        "email": f"customer{i}@example.com",
        "first_name": first,
        "last_name": random.choice(LAST),
        "country": country,
        "timezone": random.choice(COUNTRIES[country]),
        "lifetime_value": ltv,
        "orders": orders,
        "subscribed": "true" if random.random() > 0.1 else "false",
    })

fields = list(rows[0])
with open("audience.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(fields)
    for n, row in enumerate(rows):
        w.writerow([row[k] for k in fields])
        # Deliberately bad rows, spread through the file.
        if n == 1200:
            w.writerow(["c90001", "not-an-email", "Bad", "Address", "DE", "Europe/Berlin", "10", "1", "true"])
        if n == 3400:
            w.writerow(["c90002", "short@example.com", "Too", "Few"])
        if n == 5600:
            w.writerow(["c00007", "dup@example.com", "Dup", "Licate", "FR", "Europe/Paris", "99", "1", "true"])
        if n == 7800:
            w.writerow(["", "noid@example.com", "No", "Id", "GB", "Europe/London", "5", "1", "true"])
        if n == 9000:
            w.writerow(["c90003", "", "No", "Email", "US", "America/Chicago", "5", "1", "true"])
