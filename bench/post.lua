-- wrk script: POST an Audit Trail delivery with Basic Auth, a new Id on every request.
-- The Ids follow the first argument after "--" (default 0): a run that starts where the last
-- one ended sends new events, as Order Time does, not duplicates of the last run's.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic ZGVtbzpzM2NyZXQ="  -- demo:s3cret
local counter = 0
init = function(args)
  counter = tonumber(args[1]) or 0
end
request = function()
  counter = counter + 1
  local body = string.format('{"Id": %d, "ActionType": 4, "RecordType": 7, "UniqueId": 890, '
    .. '"Description": "Status Changed to Approved", "Username": "Jimmy Hendrix", '
    .. '"ActionDate": "2020-12-08T22:13:42.8181534Z"}', counter)
  return wrk.format(nil, nil, nil, body)
end
