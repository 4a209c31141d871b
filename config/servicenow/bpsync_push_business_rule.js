/**
 * bpsync push mode: tell bpsync that an incident changed, after each insert and update.
 *
 * Business rule (System Definition > Business Rules > New):
 *   Name:       bpsync push
 *   Table:      Incident [incident]
 *   Active:     true            Advanced: true
 *   When:       after           Order:    1000 (after the out-of-box rules)
 *   Insert:     true            Update:   true
 *   Condition:  !current.correlation_id.nil()
 *               (bpsync syncs only incidents that carry a BigPanda correlation_id,
 *               the same filter its poll uses; other incidents are not sent)
 *
 * It sends, through the outbound REST message "bpsync push" (method "notify", see
 * rest_message.json), a POST to <bpsync>/webhooks/servicenow with the body
 *   {"table": "incident", "sys_id": "...", "sys_mod_count": "...", "sys_updated_on": "..."}
 * and "Authorization: Bearer <push.servicenow_token>". The body is a hint: bpsync reads
 * the incident itself through the Table API, so no field value travels here.
 *
 * executeAsync(): the call goes through the ECC queue, the user's save never waits for
 * bpsync, and a call that fails is not retried: bpsync's poll (push.reconcile_interval)
 * finds whatever a lost call missed.
 *
 * System properties (System Properties > All Properties > New), readable by admin only:
 *   bpsync.push.url    e.g. https://bpsync.example.com:8080   (string)
 *   bpsync.push.token  the value of bpsync's push.servicenow_token (string; or put the
 *                      header in the REST message itself and leave this empty)
 * Optional: bpsync.push.mid_server (the MID Server's name) when the instance reaches
 * bpsync through a MID Server.
 */
(function executeRule(current, previous /* null when async */) {
    var base = gs.getProperty('bpsync.push.url', '');
    if (!base) {
        return; // push not configured: bpsync's poll still syncs
    }
    try {
        var request = new sn_ws.RESTMessageV2('bpsync push', 'notify');
        request.setEndpoint(base.replace(/\/+$/, '') + '/webhooks/servicenow');
        var token = gs.getProperty('bpsync.push.token', '');
        if (token) {
            request.setRequestHeader('Authorization', 'Bearer ' + token);
        }
        request.setRequestHeader('Content-Type', 'application/json');
        request.setRequestBody(JSON.stringify({
            table: current.getTableName(),
            sys_id: current.getUniqueValue(),
            sys_mod_count: String(current.getValue('sys_mod_count')),
            sys_updated_on: String(current.getValue('sys_updated_on'))
        }));
        request.setHttpTimeout(10000);
        var mid = gs.getProperty('bpsync.push.mid_server', '');
        if (mid) {
            request.setMIDServer(mid);
        }
        request.executeAsync();
    } catch (ex) {
        gs.warn('bpsync push: the call could not be queued: ' + ex.message);
    }
})(current, previous);
