// Parses one iCalendar object from standard input with ical.js (Thunderbird's parser)
// and prints as JSON what it found; exits 1 with {"error": ...} when it cannot parse.
import ICAL from "ical.js";

function params(property) {
  const found = {};
  for (const [name, value] of Object.entries(property.toJSON()[1])) {
    found[name.toUpperCase()] = value;
  }
  return found;
}

function person(property) {
  return property ? { value: property.getFirstValue(), params: params(property) } : null;
}

function event(component) {
  const item = new ICAL.Event(component);
  const start = component.getFirstPropertyValue("dtstart");
  const end = component.getFirstPropertyValue("dtend");
  return {
    uid: item.uid,
    sequence: component.getFirstPropertyValue("sequence"),
    summary: item.summary,
    location: item.location,
    description: item.description,
    status: component.getFirstPropertyValue("status"),
    start: start ? start.toString() : null,
    start_tzid: component.getFirstProperty("dtstart")?.getParameter("tzid") ?? null,
    start_utc: start ? start.toUnixTime() : null,
    end_utc: end ? end.toUnixTime() : null,
    organizer: person(component.getFirstProperty("organizer")),
    attendees: component.getAllProperties("attendee").map(person),
    alarms: component.getAllSubcomponents("valarm").map(
      (alarm) => String(alarm.getFirstPropertyValue("trigger"))),
  };
}

let text = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) text += chunk;
try {
  const calendar = new ICAL.Component(ICAL.parse(text));
  const zones = calendar.getAllSubcomponents("vtimezone");
  for (const zone of zones) ICAL.TimezoneService.register(zone);
  console.log(JSON.stringify({
    method: calendar.getFirstPropertyValue("method"),
    version: calendar.getFirstPropertyValue("version"),
    prodid: calendar.getFirstPropertyValue("prodid"),
    name: calendar.getFirstPropertyValue("x-wr-calname"),
    timezones: zones.map((zone) => zone.getFirstPropertyValue("tzid")),
    events: calendar.getAllSubcomponents("vevent").map(event),
  }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error) }));
  process.exit(1);
}
