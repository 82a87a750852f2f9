/* ciba.h - the CIBA backchannel authentication endpoint and the user's approval page
 * SPDX-License-Identifier: MIT
 */
#ifndef CIBAD_CIBA_H
#define CIBAD_CIBA_H

struct server_req;
struct server_worker;

/* POST /bc-authorize (backchannel_authentication_endpoint, CIBA Core 1.0 section 7). */
void ciba_bc_authorize_handle(struct server_req *sr);

/* GET and POST /approve/REF: the page the SMS links to. */
void ciba_approve_handle(struct server_req *sr);

/* Starts the periodic sweep that expires finished requests on this worker's loop. */
void ciba_sweeper_start(struct server_worker *w);
void ciba_sweeper_stop(struct server_worker *w);

#endif
