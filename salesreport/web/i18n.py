"""The dashboard's languages: the words of its pages, and numbers, money and months in each locale's
format (Babel, from CLDR: ``1 234 567,50 ₽`` in Russian, ``RUB 1,234,567.50`` in English)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal

from babel import Locale
from babel.dates import format_date, format_time, format_timedelta
from babel.numbers import format_currency, format_decimal, format_percent
from starlette.requests import Request

from ..accept import preferences
from ..headers import joined

LANGUAGES = ("en", "ru")
COOKIE = "sr_lang"

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Sales",
        "month": "Month",
        "show": "Show",
        "top_stores": "Top stores",
        "top_products": "Top products",
        "rank": "Rank",
        "address": "Address",
        "name": "Name",
        "revenue": "Revenue",
        "units": "Units sold (net of returns)",
        "previous_rank": "Rank last month",
        "new": "new",
        "revenue_12": "Revenue, last 12 months",
        "store_revenue_12": "This store's revenue, last 12 months",
        "chain_revenue": "Revenue this month",
        "vs_previous": "vs. previous month",
        "no_sales": "No sales or returns this month.",
        "csv": "CSV",
        "csv_of": "{what} as CSV",
        "store": "Store",
        "timezone": "Time zone",
        "back": "All stores",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "api_key": "API key",
        "sign_in_hint": "Sign in with an owner API key.",
        "pos_refused": "A pos key cannot open the dashboard: sign in with an owner key.",
        "metrics_refused": "A metrics key cannot open the dashboard: sign in with an owner key.",
        "bad_key": "Unknown or revoked key.",
        "language": "Language",
        "live": "Live: updated {time}",
        "chart_of": "Bar chart: {what}",
        "month_col": "Month",
        "no_store": "No such store.",
        "bad_month": "A month is written YYYY-MM, for example 2026-11.",
        "as_of": "Figures as of {time}, {lag} behind",
        "as_of_unknown": "Figures from the replica: how recent is not known",
    },
    "ru": {
        "title": "Продажи",
        "month": "Месяц",
        "show": "Показать",
        "top_stores": "Лучшие магазины",
        "top_products": "Лучшие товары",
        "rank": "Место",
        "address": "Адрес",
        "name": "Название",
        "revenue": "Выручка",
        "units": "Продано за вычетом возвратов, шт.",
        "previous_rank": "Место в прошлом месяце",
        "new": "новый",
        "revenue_12": "Выручка за 12 месяцев",
        "store_revenue_12": "Выручка магазина за 12 месяцев",
        "chain_revenue": "Выручка за месяц",
        "vs_previous": "к прошлому месяцу",
        "no_sales": "В этом месяце не было продаж и возвратов.",
        "csv": "CSV",
        "csv_of": "{what} в CSV",
        "store": "Магазин",
        "timezone": "Часовой пояс",
        "back": "Все магазины",
        "sign_in": "Войти",
        "sign_out": "Выйти",
        "api_key": "API-ключ",
        "sign_in_hint": "Войдите с API-ключом владельца.",
        "pos_refused": "Ключ кассы не открывает отчёты: войдите с ключом владельца.",
        "metrics_refused": "Ключ метрик не открывает отчёты: войдите с ключом владельца.",
        "bad_key": "Ключ неизвестен или отозван.",
        "language": "Язык",
        "live": "Обновлено {time}",
        "chart_of": "Диаграмма: {what}",
        "month_col": "Месяц",
        "no_store": "Такого магазина нет.",
        "bad_month": "Месяц пишется как ГГГГ-ММ, например 2026-11.",
        "as_of": "Данные на {time}, отставание {lag}",
        "as_of_unknown": "Данные с реплики: насколько они свежие, неизвестно",
    },
}
assert WORDS["en"].keys() == WORDS["ru"].keys()


def choose(request: Request) -> str:
    """``?lang=`` (the page's switch, remembered in a cookie), else the cookie, else Accept-Language."""
    for chosen in (request.query_params.get("lang"), request.cookies.get(COOKIE)):
        if chosen in LANGUAGES:
            return chosen
    return _negotiated(joined(request.scope, b"accept-language"))


# Every page asks, and browsers send few distinct headers: each is negotiated with Babel once.
@functools.lru_cache(maxsize=1024)
def _negotiated(accept_language: str) -> str:
    wanted = preferences(accept_language)
    try:
        best = Locale.negotiate([w for w in wanted if w], list(LANGUAGES), sep="-")
    except (ValueError, TypeError):
        best = None
    return best.language if best is not None and best.language in LANGUAGES else "en"


# A page shows some sixty figures and is rendered again each time its data changes, mostly with the
# same figures: each is formatted by Babel once (about 90 µs each), then remembered.
@functools.lru_cache(maxsize=8192)
def _money(lang: str, currency: str, amount: str) -> str:
    # Exact: the decimal string of the report, never a float, and its two decimals whatever the
    # currency's own number of digits (the API's figures are in hundredths).
    value = Decimal(amount)
    pattern = "¤¤\xa0#,##0.00" if lang == "en" else None  # the locale's own, with two decimals
    return format_currency(value, currency, format=pattern, locale=lang, currency_digits=False)


@functools.lru_cache(maxsize=8192)
def _number(lang: str, value: int) -> str:
    return format_decimal(value, locale=lang)


@dataclass(frozen=True)
class Texts:
    """Words and formats of one language, for the templates."""

    lang: str
    currency: str

    def __call__(self, key: str, **values: str) -> str:
        return WORDS[self.lang][key].format(**values)

    def money(self, amount: str) -> str:
        return _money(self.lang, self.currency, amount)

    def number(self, value: int) -> str:
        return _number(self.lang, value)

    def number_text(self, value: str) -> str:
        return _number(self.lang, int(value))

    def change(self, now: str, before: str) -> str | None:
        """The change from ``before`` to ``now`` in percent, signed; None when there was nothing before."""
        old, new = Decimal(before), Decimal(now)
        if old == 0:
            return None
        return format_percent((new - old) / abs(old), format="+#,##0.0%;-#,##0.0%", locale=self.lang)

    def month(self, month: str) -> str:
        """The month as a heading: "June 2026", "Июнь 2026" (CLDR's stand-alone names are lower-case
        in Russian, as inside a sentence; a heading starts with a capital)."""
        year, number = (int(part) for part in month.split("-"))
        text = format_date(date(year, number, 1), "LLLL yyyy", locale=self.lang)
        return text[:1].upper() + text[1:]

    def month_short(self, month: str) -> str:
        """The month under a chart's bar: its short stand-alone name ("Jun", "июнь"). The bars are twelve
        months in a row, and the table beside them names each in full; a two-digit year ("Jun 26")
        reads as a day, and a numeric one ("6/2026") does not fit under a bar."""
        year, number = (int(part) for part in month.split("-"))
        return format_date(date(year, number, 1), "LLL", locale=self.lang)

    def time(self, instant: datetime, zone: tzinfo) -> str:
        return format_time(instant.astimezone(zone), "medium", locale=self.lang)

    def duration(self, seconds: float) -> str:
        return format_timedelta(timedelta(seconds=seconds), threshold=2, locale=self.lang)
